//! Text generation with a KV cache: greedy by default, or sampling with temperature, top-k and top-p from a
//! seeded RNG. Stops at any of the stop ids (EOS, `<end_of_turn>`) or after `max_new_tokens`.
use rand::{Rng, SeedableRng};

use crate::decoder::{Gemma, KvCache, TokenBatch};
use crate::layers::lora::LoraRuntime;
use crate::quant::FrozenMatmul;

#[derive(Debug, Clone)]
pub struct SamplingConfig {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    /// 0 = no top-k filtering.
    pub top_k: usize,
    /// 1.0 = no nucleus filtering.
    pub top_p: f64,
    pub seed: u64,
    pub stop_ids: Vec<u32>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self { max_new_tokens: 32, temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, stop_ids: vec![] }
    }
}

/// Picks the next token from one row of logits.
pub fn sample(logits: &[f32], cfg: &SamplingConfig, rng: &mut impl Rng) -> u32 {
    let argmax = || {
        let mut best = 0usize;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        best as u32
    };
    if cfg.temperature <= 0.0 {
        return argmax();
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if cfg.top_k > 0 {
        idx.truncate(cfg.top_k);
    }
    let t = cfg.temperature as f32;
    let max = logits[idx[0]] / t;
    let mut probs: Vec<f64> = idx.iter().map(|&i| ((logits[i] / t - max) as f64).exp()).collect();
    let sum: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    if cfg.top_p < 1.0 {
        // Keep the smallest prefix whose mass reaches top_p (always at least one token).
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= cfg.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        idx.truncate(keep);
        let s: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= s);
    }
    let mut r: f64 = rng.random();
    for (p, &i) in probs.iter().zip(&idx) {
        if r < *p {
            return i as u32;
        }
        r -= p;
    }
    idx[idx.len() - 1] as u32
}

impl<B: FrozenMatmul> Gemma<B> {
    /// Generates after `prompt` (which should start with BOS). Returns only the new ids.
    pub fn generate(&self, prompt: &[u32], cfg: &SamplingConfig) -> Vec<u32> {
        let rt = LoraRuntime::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
        let mut cache = KvCache::new(self.layers.len());
        let mut out = Vec::new();
        let mut tokens = TokenBatch::from_rows(&[prompt.to_vec()]);
        for _ in 0..cfg.max_new_tokens {
            let hidden = self.forward_hidden(&tokens, Some(&mut cache), &rt);
            let last = hidden.narrow(1, tokens.seq - 1, 1);
            let logits: Vec<f32> = self.lm_head(last).into_data().convert::<f32>().to_vec().unwrap_or_default();
            let next = sample(&logits, cfg, &mut rng);
            out.push(next);
            if cfg.stop_ids.contains(&next) {
                break;
            }
            let pos = cache.next_position();
            tokens = TokenBatch { ids: vec![next], batch: 1, seq: 1, positions: vec![pos], segments: None };
        }
        out
    }

    /// Greedy generation without a cache: the whole sequence is recomputed for every token. Slow; it exists
    /// to check the cached path.
    pub fn generate_uncached(&self, prompt: &[u32], max_new_tokens: usize) -> Vec<u32> {
        let rt = LoraRuntime::default();
        let mut seq = prompt.to_vec();
        for _ in 0..max_new_tokens {
            let tokens = TokenBatch::from_rows(&[seq.clone()]);
            let hidden = self.forward_hidden(&tokens, None, &rt).narrow(1, seq.len() - 1, 1);
            let logits: Vec<f32> = self.lm_head(hidden).into_data().convert::<f32>().to_vec().unwrap_or_default();
            seq.push(sample(&logits, &SamplingConfig::default(), &mut rand::rngs::StdRng::seed_from_u64(0)));
        }
        seq[prompt.len()..].to_vec()
    }
}
