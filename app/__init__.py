"""What a person touches: the `orchard` command line and the Textual chat UI."""
