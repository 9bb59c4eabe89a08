"""Non-code resources (model catalog, UI stylesheets, benchmark prompts), installed as `orchard_assets`."""
