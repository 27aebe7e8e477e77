//! Text generation with a KV cache: greedy by default, or sampling with temperature, top-k and top-p from a
//! seeded RNG. Stops at any of the stop ids (EOS, `<end_of_turn>`) or after `max_new_tokens`.
use rand::{Rng, SeedableRng};

use crate::gemma::model::{Gemma, TokenBatch};
use crate::nn::kv_cache::KvCache;
use crate::nn::lora::LoraRuntime;
use crate::ops::gemma_backend::GemmaBackend;

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

/// Where a generation's time went: the prompt's forward pass and the first new token (`prompt_s`), then one
/// forward pass of one token per further token (`decode_s`; what llama.cpp's `llama-bench` times as `tg`).
#[derive(Debug, Clone, Copy, Default)]
pub struct GenerationTiming {
    pub prompt_s: f64,
    pub decode_s: f64,
}

impl<B: GemmaBackend> Gemma<B> {
    /// Generates after `prompt` (which should start with BOS). Returns only the new ids.
    pub fn generate(&self, prompt: &[u32], cfg: &SamplingConfig) -> Vec<u32> {
        self.generate_timed(prompt, cfg).0
    }

    /// [`Self::generate`], and how long the prompt (up to the first new token) and the tokens after it took.
    pub fn generate_timed(&self, prompt: &[u32], cfg: &SamplingConfig) -> (Vec<u32>, GenerationTiming) {
        // On a thread of rayon's pool: each token's products then split their work with the other threads
        // from here, instead of handing it to the pool and sleeping until it is done (a wake-up per
        // product, ~12% of a token on two cores).
        rayon::scope(|_| {
            let (mut rows, timing) = self.generate_rows(&[prompt.to_vec()], cfg);
            (rows.pop().unwrap_or_default(), timing)
        })
    }

    /// [`Self::generate`] for several prompts of the same length at once: one KV cache for the batch, so each
    /// step reads the weights once for all rows (generation is bound by reading them). Each row samples with
    /// its own RNG seeded as [`Self::generate`] seeds it, and stops at its own stop id (the batch runs until
    /// every row has stopped), so each row's tokens are the ones [`Self::generate`] gives it up to summation
    /// order in the batched products. Panics if the prompts' lengths differ (callers group them).
    pub fn generate_batch(&self, prompts: &[Vec<u32>], cfg: &SamplingConfig) -> Vec<Vec<u32>> {
        rayon::scope(|_| self.generate_rows(prompts, cfg).0)
    }

    fn generate_rows(&self, prompts: &[Vec<u32>], cfg: &SamplingConfig) -> (Vec<Vec<u32>>, GenerationTiming) {
        let start = std::time::Instant::now();
        // Seconds to the first new token (when there is a second).
        let mut first: Option<f64> = None;
        let rt = LoraRuntime::default();
        let n = prompts.len();
        if n == 0 {
            return (Vec::new(), GenerationTiming::default());
        }
        let mut rngs: Vec<_> = (0..n).map(|_| rand::rngs::StdRng::seed_from_u64(cfg.seed)).collect();
        let mut cache = KvCache::new(self.layers.len());
        let mut out = vec![Vec::new(); n];
        let mut done = vec![false; n];
        let mut tokens = TokenBatch::from_rows(prompts);
        let vocab = self.config.vocab_size;
        for step in 0..cfg.max_new_tokens {
            if step == 1 {
                first = Some(start.elapsed().as_secs_f64());
            }
            let hidden = self.forward_hidden(&tokens, Some(&mut cache), &rt);
            let last = hidden.narrow(1, tokens.seq - 1, 1);
            let logits: Vec<f32> = self.lm_head(last).into_data().convert::<f32>().to_vec().unwrap_or_default();
            let mut next = Vec::with_capacity(n);
            for (r, row) in logits.chunks(vocab).enumerate() {
                // A stopped row keeps feeding its stop id: its tokens are no longer read.
                let id = if done[r] {
                    *out[r].last().expect("a stopped row has a token")
                } else {
                    sample(row, cfg, &mut rngs[r])
                };
                if !done[r] {
                    out[r].push(id);
                    done[r] = cfg.stop_ids.contains(&id);
                }
                next.push(id);
            }
            if done.iter().all(|&d| d) {
                break;
            }
            let pos = cache.next_position();
            tokens = TokenBatch { ids: next, batch: n, seq: 1, positions: vec![pos; n], segments: None };
        }
        let total = start.elapsed().as_secs_f64();
        let prompt_s = first.unwrap_or(total);
        (out, GenerationTiming { prompt_s, decode_s: total - prompt_s })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(temperature: f64, top_k: usize, top_p: f64) -> SamplingConfig {
        SamplingConfig { temperature, top_k, top_p, ..Default::default() }
    }

    #[test]
    fn greedy_and_degenerate_filters_pick_the_argmax() {
        let logits = [0.5f32, 2.0, -1.0, 1.9];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        assert_eq!(sample(&logits, &cfg(0.0, 0, 1.0), &mut rng), 1);
        for _ in 0..50 {
            assert_eq!(sample(&logits, &cfg(1.0, 1, 1.0), &mut rng), 1, "top-k 1");
            assert_eq!(sample(&logits, &cfg(1.0, 0, 1e-6), &mut rng), 1, "top-p tiny");
        }
    }

    /// Frequencies follow softmax(logits / T) restricted to the top-k / nucleus, renormalised.
    #[test]
    fn sampling_frequencies_follow_the_filtered_softmax() {
        let logits = [2.0f32, 1.0, 0.0, -3.0];
        let softmax = |xs: &[f64]| {
            let s: f64 = xs.iter().map(|x| x.exp()).sum();
            xs.iter().map(|x| x.exp() / s).collect::<Vec<_>>()
        };
        // T = 2, no filter: p = softmax([1, 0.5, 0, -1.5]).
        let full = softmax(&[1.0, 0.5, 0.0, -1.5]);
        // top-k 2: only the first two, renormalised.
        let k2 = softmax(&[1.0, 0.5]);
        // top-p 0.8 at T = 1: p = softmax(logits) = [0.705, 0.259, 0.035, 0.002]; 0.705 < 0.8 <= 0.964 keeps two.
        let p1 = softmax(&[2.0, 1.0, 0.0, -3.0]);
        let p08 = [p1[0] / (p1[0] + p1[1]), p1[1] / (p1[0] + p1[1])];
        let n = 40_000;
        for (c, want) in
            [(cfg(2.0, 0, 1.0), full.clone()), (cfg(2.0, 2, 1.0), k2.clone()), (cfg(1.0, 0, 0.8), p08.to_vec())]
        {
            let mut rng = rand::rngs::StdRng::seed_from_u64(42);
            let mut counts = [0usize; 4];
            for _ in 0..n {
                counts[sample(&logits, &c, &mut rng) as usize] += 1;
            }
            for (i, &cnt) in counts.iter().enumerate() {
                let p = want.get(i).copied().unwrap_or(0.0);
                let f = cnt as f64 / n as f64;
                // 5 standard deviations of a binomial frequency.
                let tol = 5.0 * (p * (1.0 - p) / n as f64).sqrt() + 1e-9;
                assert!((f - p).abs() <= tol, "{c:?}: token {i} frequency {f} vs {p}");
            }
        }
    }

    #[test]
    fn same_seed_same_samples() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 / 3.0).collect();
        let draw = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            (0..20).map(|_| sample(&logits, &cfg(0.9, 10, 0.95), &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
