//! The frozen weights on the device: each packed weight's bytes are uploaded once, on its first product, and
//! kept while the weight lives; every product then dequantizes them into a dense f32 buffer that is dropped
//! with the product (the QLoRA memory model: packed resident, dense transient).
//!
//! The cache is keyed by the runtime and the weight's `Arc` address, and holds a `Weak` to the weight, so
//! that it needs no field in `PackedWeight` (a host type, also used by the CPU backends): an entry whose
//! weight was dropped is stale (its address may be reused by a new weight) and is replaced, and every
//! insertion first frees the stale entries' device buffers, so loading a second model in one process does not
//! keep the first one's weights. One device per runtime (the first GPU): the handles belong to its client.
use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use burn::tensor::DType;
use burn_cubecl::element::BoolElement;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime};
use cubecl::client::ComputeClient;

use super::dequant::{Int8Device, Nf4Device};
use super::ggml::GgmlDevice;
use crate::quant::PackedWeight;

#[derive(Debug)]
enum OnDevice {
    Nf4(Nf4Device),
    Int8(Int8Device),
    Ggml(GgmlDevice),
}

struct Entry {
    weight: Weak<PackedWeight>,
    device: Arc<OnDevice>,
}

type Cache = HashMap<(TypeId, usize), Entry>;

fn cache() -> &'static Mutex<Cache> {
    static CACHE: std::sync::OnceLock<Mutex<Cache>> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The packed weight's device buffers, uploading them on first use.
fn on_device<R: CubeRuntime>(w: &Arc<PackedWeight>, client: &ComputeClient<R>) -> Arc<OnDevice> {
    let key = (TypeId::of::<R>(), Arc::as_ptr(w) as usize);
    // A poisoned lock only means another thread panicked mid-insert; the map itself is still consistent.
    let mut cache = cache().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = cache.get(&key) {
        if e.weight.upgrade().is_some_and(|live| Arc::ptr_eq(&live, w)) {
            return e.device.clone();
        }
    }
    cache.retain(|_, e| e.weight.strong_count() > 0);
    let device = Arc::new(match w.as_ref() {
        PackedWeight::Nf4(q) => OnDevice::Nf4(Nf4Device::upload(client, q)),
        PackedWeight::Int8(q) => OnDevice::Int8(Int8Device::upload(client, q)),
        PackedWeight::Ggml(q) => OnDevice::Ggml(GgmlDevice::upload(client, q)),
    });
    cache.insert(key, Entry { weight: Arc::downgrade(w), device: device.clone() });
    device
}

/// Bytes of packed weights held on the device now (for `lapidary bench` and the tests).
pub fn resident_bytes() -> usize {
    let cache = cache().lock().unwrap_or_else(|e| e.into_inner());
    cache
        .values()
        .filter(|e| e.weight.strong_count() > 0)
        .map(|e| match e.device.as_ref() {
            OnDevice::Nf4(d) => d.resident_bytes(),
            OnDevice::Int8(d) => d.resident_bytes(),
            OnDevice::Ggml(d) => d.resident_bytes(),
        })
        .sum()
}

/// The dense `[out, in]` weight in `dtype` as a device tensor: dequantized by the kernels from the cached
/// packed bytes, or (`LAPIDARY_DEQUANT=host`) on the host, uploaded as f32 and cast.
pub fn dense<R: CubeRuntime>(
    w: &Arc<PackedWeight>,
    client: &ComputeClient<R>,
    device: &R::Device,
    dtype: DType,
) -> CubeTensor<R> {
    let [o, i] = w.shape();
    // F64 blocks have no kernel (`super::ggml::on_device`): dequantized on the host, like
    // `LAPIDARY_DEQUANT=host`.
    if !device_dequant() || matches!(w.as_ref(), PackedWeight::Ggml(g) if !super::ggml::on_device(g.dtype)) {
        let handle = client.create_from_slice(bytemuck::cast_slice(&w.dequantize()));
        let t = CubeTensor::new_contiguous(client.clone(), device.clone(), [o, i].into(), handle, DType::F32);
        return burn_cubecl::kernel::cast(t, dtype);
    }
    let handle = match on_device(w, client).as_ref() {
        OnDevice::Nf4(d) => d.dequantize(client, dtype),
        OnDevice::Int8(d) => d.dequantize(client, dtype),
        OnDevice::Ggml(d) => d.dequantize(client, dtype),
    };
    CubeTensor::new_contiguous(client.clone(), device.clone(), [o, i].into(), handle, dtype)
}

/// Whether to dequantize with the kernels (else on the host): `LAPIDARY_DEQUANT`, read once.
fn device_dequant() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !matches!(std::env::var("LAPIDARY_DEQUANT").as_deref(), Ok("host")))
}

/// [`dense`] as a Burn tensor on `device`: what the tests compare with the host dequantization.
pub fn dense_tensor<R: CubeRuntime, BT: BoolElement>(
    w: &Arc<PackedWeight>,
    device: &R::Device,
) -> burn::tensor::Tensor<CubeBackend<R, f32, i32, BT>, 2> {
    let client = R::client(device);
    let t = dense(w, &client, device, DType::F32);
    burn::tensor::Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(t))
}
