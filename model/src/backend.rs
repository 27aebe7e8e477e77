//! Backend choices. CPU: burn-ndarray (the design card's backend) or burn-flex; both f32. Everything in the
//! model is generic over `FrozenMatmul` backends; these aliases are what the CLI and tests instantiate.
pub type NdArrayCpu = burn_ndarray::NdArray<f32>;
pub type FlexCpu = burn_flex::Flex<f32>;
/// The default CPU backend.
pub type Cpu = NdArrayCpu;
pub type CpuAutodiff = burn_autodiff::Autodiff<Cpu>;
