//! A frozen `[out, in]` weight kept as a GGUF file stores it: ggml blocks along each row (`in` is the
//! contiguous axis, GGUF's `ne[0]`), in whatever type the file holds for that tensor. Resident memory is the
//! file's bytes; the dense weight exists only inside one product, as for NF4.
use super::dequant::dequantize_blocks;
use super::types::GgmlType;

#[derive(Debug, Clone, PartialEq)]
pub struct GgmlWeight {
    pub dtype: GgmlType,
    /// `[out, in]`, row-major.
    pub shape: [usize; 2],
    /// The tensor's bytes as stored: `out` rows of `in / block` blocks.
    pub bytes: Vec<u8>,
}

impl GgmlWeight {
    /// Checks that `bytes` hold exactly `shape` in `dtype` (rows made of whole blocks); the message says what
    /// is wrong.
    pub fn new(dtype: GgmlType, shape: [usize; 2], bytes: Vec<u8>) -> Result<Self, String> {
        let (block, block_bytes) = dtype
            .block_layout()
            .filter(|_| dtype.is_supported())
            .ok_or_else(|| format!("type {dtype} cannot be read"))?;
        let [out, inp] = shape;
        if !inp.is_multiple_of(block) {
            return Err(format!("rows of {inp} elements are not whole {dtype} blocks of {block}"));
        }
        let want = out * (inp / block) * block_bytes;
        if bytes.len() != want {
            return Err(format!("{} bytes for {out}x{inp} in {dtype}, expected {want}", bytes.len()));
        }
        Ok(Self { dtype, shape, bytes })
    }

    /// The dense `[out, in]` weight, row-major, exactly as ggml's reference dequantization gives it.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.shape[0] * self.shape[1]];
        dequantize_blocks(self.dtype, &self.bytes, &mut out).expect("checked by GgmlWeight::new");
        out
    }

    pub fn resident_bytes(&self) -> usize {
        self.bytes.len()
    }
}
