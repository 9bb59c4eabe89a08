// Compiled (not run) at configure time: can this compiler build against MLX's headers?
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"

int main() {
  return sizeof(mlx::core::UnaryPrimitive) > 0 ? 0 : 1;
}
