//! Frozen-base quantization: NF4 and int8 storage, and the frozen linear that multiplies by them.
mod dynamic_map;
pub mod int8;
pub mod linear;
pub mod nf4;

pub use int8::Int8Weight;
pub use linear::{FrozenLinear, FrozenMatmul, FrozenWeight, PackedWeight, QuantKind};
pub use nf4::Nf4Weight;
