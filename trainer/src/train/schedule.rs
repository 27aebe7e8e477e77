//! The learning rate of each optimizer step.
//!
//! `step` counts optimizer steps already taken (0 for the first). Warmup ramps linearly so the first step
//! already moves (`lr · 1/warmup`, reaching `lr` at step `warmup - 1`; transformers' version spends step 0 at
//! lr 0). After warmup, with `p = (step - warmup) / (total - warmup)` in `[0, 1)`:
//! constant `lr`, linear `lr · (1 - p)`, cosine `lr · ½(1 + cos πp)` — both decay towards 0 at `total`.
use super::config::Scheduler;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: Scheduler,
    pub lr: f64,
    pub warmup: u64,
    pub total: u64,
}

impl Schedule {
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let decay_steps = self.total.saturating_sub(self.warmup).max(1);
        let p = ((step - self.warmup) as f64 / decay_steps as f64).min(1.0);
        match self.kind {
            Scheduler::Constant => self.lr,
            Scheduler::Linear => self.lr * (1.0 - p),
            Scheduler::Cosine => self.lr * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn warmup_then_cosine() {
        // lr 1, warmup 4, total 12: warmup .25 .5 .75 1; then p = 0, 1/8, ..., 7/8.
        let s = Schedule { kind: Scheduler::Cosine, lr: 1.0, warmup: 4, total: 12 };
        for (step, want) in [(0, 0.25), (1, 0.5), (2, 0.75), (3, 1.0)] {
            close(s.lr_at(step), want);
        }
        close(s.lr_at(4), 1.0); // p = 0
        close(s.lr_at(6), 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos())); // p = 1/4: 0.853553...
        close(s.lr_at(6), 0.853_553_390_593_273_8);
        close(s.lr_at(8), 0.5); // p = 1/2
        close(s.lr_at(10), 0.146_446_609_406_726_24); // p = 3/4
        close(s.lr_at(12), 0.0); // p = 1 (past the last step)
    }

    #[test]
    fn linear_and_constant() {
        let lin = Schedule { kind: Scheduler::Linear, lr: 2e-4, warmup: 2, total: 10 };
        close(lin.lr_at(0), 1e-4);
        close(lin.lr_at(1), 2e-4);
        close(lin.lr_at(2), 2e-4); // p = 0
        close(lin.lr_at(6), 1e-4); // p = 4/8
        close(lin.lr_at(9), 2e-4 * 1.0 / 8.0); // p = 7/8
        let c = Schedule { kind: Scheduler::Constant, lr: 3e-4, warmup: 0, total: 5 };
        for step in 0..5 {
            close(c.lr_at(step), 3e-4);
        }
    }

    #[test]
    fn no_warmup_cosine_starts_at_lr_and_warmup_longer_than_run() {
        let s = Schedule { kind: Scheduler::Cosine, lr: 1.0, warmup: 0, total: 4 };
        close(s.lr_at(0), 1.0);
        close(s.lr_at(2), 0.5);
        let s = Schedule { kind: Scheduler::Cosine, lr: 1.0, warmup: 10, total: 4 };
        close(s.lr_at(3), 0.4);
    }
}
