//! Backend choices. CPU: burn-flex (default) or burn-ndarray (the design card's backend, selectable with
//! `--backend ndarray`); both f32. Everything in the model is generic over `FrozenMatmul` backends; these
//! aliases are what the CLI and tests instantiate.
//!
//! Why flex is the default: on the real Gemma 3 270M (2 cores, see docs/benchmarks.md) a 13-token forward
//! takes ~150 ms on flex and ~490 ms on ndarray, and the LM-head loss ~130 ms against ~650 ms; burn-ndarray
//! also copies any transposed operand of a matmul.
pub type NdArrayCpu = burn_ndarray::NdArray<f32>;
pub type FlexCpu = burn_flex::Flex<f32>;
/// The default CPU backend.
pub type Cpu = FlexCpu;
pub type CpuAutodiff = burn_autodiff::Autodiff<Cpu>;
