//! Backend choices. CPU: burn-flex (default) or burn-ndarray (the design card's backend, selectable with
//! `--backend ndarray`); both f32. Everything in the model is generic over `FrozenMatmul` backends; these
//! aliases are what the CLI and tests instantiate.
//!
//! Why flex is the default: on the real Gemma 3 270M (2 cores; `cargo run --release -p lapidary-model --example
//! timing -- MODEL`) a 13-token forward costs about the same on both (~150-200 ms) once dense weights are
//! stored contiguously, but the LM-head loss over the 262k vocabulary takes ~210 ms on flex against ~850 ms
//! on ndarray. See docs/benchmarks.md.
pub type NdArrayCpu = burn_ndarray::NdArray<f32>;
pub type FlexCpu = burn_flex::Flex<f32>;
/// The default CPU backend.
pub type Cpu = FlexCpu;
pub type CpuAutodiff = burn_autodiff::Autodiff<Cpu>;
