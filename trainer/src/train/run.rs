//! The training run, top to bottom: check the output directory and the data, load the model, add (or
//! restore) the adapter, then for each step: lr → maybe eval → micro-batches → clip → AdamW → log → maybe
//! checkpoint. At the end: a last eval, a last checkpoint and `OUT/adapter/`.
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::backend::Autodiff;
use indicatif::{ProgressBar, ProgressStyle};
use lapidary_data::{Batch, Batches};
use lapidary_model::peft::adapter::{init_lora, AdapterConfig};
use lapidary_model::GemmaBackend;
use lapidary_model::ModelFiles;

use super::checkpoint::{self, dropout_seed, RngState, TrainState};
use super::config::Recipe;
use super::eval::{EvalSet, Scores};
use super::metrics::{Metrics, Row};
use super::optim::{AdamW, AdamWConfig};
use super::params::{write_adapter, Param, Params};
use super::schedule::Schedule;
use super::step::{check_finite, train_step};
use crate::common::{BackendKind, Quant};

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Continue from the newest complete checkpoint in `OUT/checkpoints`.
    pub resume: bool,
    /// Replace an earlier run in the output directory.
    pub overwrite: bool,
    /// Checkpoint and stop after this many optimizer steps (as Ctrl-C does).
    pub stop_after: Option<u64>,
}

pub fn run(recipe: &Recipe, opts: &Options) -> Result<()> {
    let backend: BackendKind = recipe.train.backend.into();
    crate::dispatch!(backend, run_on, recipe, opts)
}

fn run_on<B: GemmaBackend>(recipe: &Recipe, opts: &Options) -> Result<()> {
    let (t, out) = (&recipe.train, recipe.output.dir.as_path());
    let resume_from = check_output(out, opts)?;

    // Model files and data are checked before anything is written.
    let files =
        ModelFiles::open(&recipe.model.path).with_context(|| format!("model.path {}", recipe.model.path.display()))?;
    let ModelFiles { config: model_config, weights, tokenizer, .. } = files;
    let total_steps = plan_steps(recipe, &tokenizer)?;
    let eval_set = EvalSet::load(recipe, &tokenizer, &model_config.eos_token_ids)?;

    let device = Default::default();
    let quant: Quant = recipe.model.quant.into();
    let mut model =
        lapidary_model::gemma::load::load_gemma::<Autodiff<B>>(&model_config, weights.as_ref(), quant.into(), &device)
            .with_context(|| format!("loading {}", recipe.model.path.display()))?
            .with_compute_dtype(recipe.model.compute_dtype.into());
    drop(weights);
    let l = &recipe.lora;
    let adapter_cfg = AdapterConfig::new(
        l.r,
        l.alpha,
        l.dropout,
        &l.targets,
        l.rslora,
        Some(recipe.model.path.display().to_string()),
    );
    init_lora(&mut model, &adapter_cfg, t.seed)?;
    let mut params = Params::read(&mut model);
    let opt_cfg =
        AdamWConfig { beta1: t.adam_beta1, beta2: t.adam_beta2, eps: t.adam_eps, weight_decay: t.weight_decay };
    let recipe_toml = recipe.to_toml()?;

    let (mut opt, mut state, mut batches) = match &resume_from {
        Some((_, dir)) => {
            let old_path = dir.join("config.toml");
            let old_text = std::fs::read_to_string(&old_path)
                .with_context(|| format!("{}: cannot resume from this checkpoint", old_path.display()))?;
            let old = Recipe::parse(&old_text, &old_path, &[])?;
            if let Some(key) = recipe.resume_mismatch(&old) {
                bail!(
                    "--resume: `{key}` differs from the run in {} ({}); resume with the same recipe or start a new \
                     output.dir",
                    out.display(),
                    dir.join("config.toml").display()
                );
            }
            let ck = checkpoint::load(dir, &params, opt_cfg, &device)?;
            params = ck.params;
            params.write(&mut model, false);
            let batches = Batches::resume(&recipe.data.train, tokenizer.clone(), recipe.train_data(), &ck.state.data)
                .with_context(|| format!("training data {}", recipe.data.train.display()))?;
            (ck.opt, ck.state, batches)
        }
        None => {
            let batches = Batches::new(&recipe.data.train, tokenizer.clone(), recipe.train_data())?;
            let state = TrainState {
                step: 0,
                data: batches.position(),
                rng: RngState { seed: t.seed },
                tokens_seen: 0,
                train_seconds: 0.0,
            };
            (AdamW::new(opt_cfg, params.len(), &device), state, batches)
        }
    };

    // From here on the output directory is ours.
    if opts.overwrite {
        for p in ["checkpoints", "adapter"] {
            let p = out.join(p);
            if p.exists() {
                std::fs::remove_dir_all(&p).with_context(|| format!("{}: cannot remove", p.display()))?;
            }
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("output.dir {}: cannot create", out.display()))?;
    std::fs::write(out.join("config.toml"), &recipe_toml)
        .with_context(|| format!("{}: cannot write", out.join("config.toml").display()))?;
    let mut metrics = Metrics::open(out, resume_from.as_ref().map(|(s, _)| *s))?;

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C kills at once.
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    }

    let n_params = params.len();
    let schedule = Schedule { kind: t.scheduler, lr: t.lr, warmup: t.warmup_steps, total: total_steps };
    let pb = progress(total_steps, state.step);
    let say = |pb: &ProgressBar, msg: String| {
        if pb.is_hidden() {
            eprintln!("{msg}");
        } else {
            pb.println(msg);
        }
    };
    say(
        &pb,
        format!(
            "training {} ({} layers, quant {:?}) with {} LoRA parameters for {} steps{}",
            recipe.model.path.display(),
            model_config.num_hidden_layers,
            recipe.model.quant,
            n_params,
            total_steps,
            match &resume_from {
                Some((s, _)) => format!(", resuming at step {s}"),
                None => String::new(),
            }
        ),
    );

    let evaluate =
        |model: &lapidary_model::Gemma<Autodiff<B>>, step: u64, metrics: &mut Metrics| -> Result<Option<Scores>> {
            let Some(set) = &eval_set else { return Ok(None) };
            let scores = set.run(model, step)?;
            metrics.log(Row::eval(step, &scores))?;
            Ok(Some(scores))
        };
    let save =
        |state: &TrainState, params: &Params<B>, opt: &AdamW<B>, metrics: &Metrics, pb: &ProgressBar| -> Result<()> {
            checkpoint::save(out, state, params, opt, &adapter_cfg, &recipe_toml, t.keep_checkpoints)?;
            if let Err(e) = metrics.plot(out) {
                say(pb, format!("warning: loss.png not drawn: {e}"));
            }
            Ok(())
        };

    let mut last_ckpt = resume_from.as_ref().map(|(s, _)| *s);
    let mut last_eval = None;
    let mut last_loss = None;
    while state.step < total_steps {
        let step = state.step;
        let lr = schedule.lr_at(step);
        if step == 0 || (t.eval_every > 0 && step % t.eval_every == 0) {
            if let Some(s) = evaluate(&model, step, &mut metrics)? {
                say(&pb, format!("step {step}: {}", s.line()));
                last_eval = Some(s);
            }
        }
        let window = next_window(&mut batches, t.grad_accum)
            .with_context(|| format!("training data {}", recipe.data.train.display()))?;
        if window.is_empty() {
            break; // the epochs ran out a little before the planned step count
        }
        let t0 = Instant::now();
        let seed = t.seed;
        let gc = t.gradient_checkpointing;
        let r = train_step(&mut model, &mut params, &mut opt, &window, lr, t.max_grad_norm, gc, |micro| {
            dropout_seed(seed, step, micro)
        });
        let stats = check_finite(step + 1, r, last_ckpt)?;
        let dt = t0.elapsed().as_secs_f64();
        state.step = step + 1;
        state.data = batches.position();
        state.tokens_seen += stats.tokens as u64;
        state.train_seconds += dt;
        let tps = stats.tokens as f64 / dt.max(1e-9);
        metrics.log(Row::Train {
            step: state.step,
            loss: stats.loss,
            lr,
            grad_norm: stats.grad_norm,
            tokens: stats.tokens,
            tokens_per_s: tps,
        })?;
        last_loss = Some(stats.loss);
        pb.set_position(state.step);
        pb.set_message(format!("loss {:.4}  lr {lr:.2e}  {tps:.0} tok/s", stats.loss));
        if pb.is_hidden() {
            eprintln!(
                "step {}/{total_steps}: loss {:.4}  lr {lr:.3e}  grad_norm {:.3}  {tps:.0} tok/s",
                state.step, stats.loss, stats.grad_norm
            );
        }
        let stopping = stop.load(Ordering::SeqCst) || opts.stop_after.is_some_and(|n| state.step >= n);
        if stopping || (t.save_every > 0 && state.step % t.save_every == 0) {
            save(&state, &params, &opt, &metrics, &pb)?;
            last_ckpt = Some(state.step);
        }
        if stopping && state.step < total_steps {
            pb.abandon();
            eprintln!(
                "stopped after step {} of {total_steps}; checkpoint saved in {}. Continue with: lapidary train \
                 CONFIG --resume",
                state.step,
                checkpoint::checkpoints_dir(out).join(format!("step-{}", state.step)).display()
            );
            return Ok(());
        }
    }

    if let Some(s) = evaluate(&model, state.step, &mut metrics)? {
        last_eval = Some(s);
    }
    if last_ckpt != Some(state.step) {
        save(&state, &params, &opt, &metrics, &pb)?;
    } else if let Err(e) = metrics.plot(out) {
        say(&pb, format!("warning: loss.png not drawn: {e}"));
    }
    write_final_adapter(out, &params.to_host(), &adapter_cfg)?;
    pb.finish_and_clear();
    let tps = state.tokens_seen as f64 / state.train_seconds.max(1e-9);
    let eval = last_eval.unwrap_or_default();
    eprintln!(
        "done: {} steps, train loss {}, {}, {tps:.0} tokens/s; adapter in {}",
        state.step,
        last_loss.map_or("-".into(), |l| format!("{l:.4}")),
        if last_eval.is_some() { eval.line() } else { "no eval set".to_string() },
        out.join("adapter").display()
    );
    let mut summary = serde_json::json!({
        "steps": state.step,
        "train_loss": last_loss,
        "eval_loss": eval.loss,
        "tokens": state.tokens_seen,
        "train_seconds": state.train_seconds,
        "tokens_per_s": tps,
        "peak_rss_mib": peak_rss_mib(),
        "adapter": out.join("adapter"),
    });
    if let Some((acc, _, _)) = eval.exact_match {
        summary["eval_exact_match"] = serde_json::json!(acc);
    }
    if let Some((acc, norm)) = eval.choice {
        summary["eval_acc"] = serde_json::json!(acc);
        summary["eval_acc_norm"] = serde_json::json!(norm);
    }
    crate::common::print_json(&summary);
    Ok(())
}

/// Refuses to touch an earlier run unless asked; returns the checkpoint to resume from. Writes nothing.
fn check_output(out: &Path, opts: &Options) -> Result<Option<(u64, PathBuf)>> {
    if opts.resume && opts.overwrite {
        bail!("--resume continues the run in output.dir and --overwrite replaces it; pass one of them");
    }
    if out.exists() && !out.is_dir() {
        bail!("output.dir {} exists and is not a directory", out.display());
    }
    let ckpts = checkpoint::list(out);
    if opts.resume {
        return match ckpts.last() {
            Some(c) => Ok(Some(c.clone())),
            None => bail!(
                "--resume: no complete checkpoint in {}; start without --resume",
                checkpoint::checkpoints_dir(out).display()
            ),
        };
    }
    if !opts.overwrite {
        if out.join("adapter").exists() {
            bail!(
                "{} holds the adapter of an earlier run; pass --overwrite to replace that run, --resume to continue \
                 it, or choose another output.dir",
                out.join("adapter").display()
            );
        }
        if !ckpts.is_empty() {
            bail!(
                "{} holds checkpoints of an unfinished run; pass --resume to continue it or --overwrite to start over",
                checkpoint::checkpoints_dir(out).display()
            );
        }
    }
    Ok(None)
}

/// The number of optimizer steps: `max_steps`, or the batches in `epochs` passes over the data divided by
/// `grad_accum` (one pass over the data to count them), whichever is smaller. Also proves the data yields
/// at least one batch before anything is written.
fn plan_steps(recipe: &Recipe, tokenizer: &tokenizers::Tokenizer) -> Result<u64> {
    let t = &recipe.train;
    let path = &recipe.data.train;
    let ctx = || format!("training data {}", path.display());
    let mut b = Batches::new(path, tokenizer.clone(), recipe.train_data()).with_context(ctx)?;
    match t.epochs {
        None => match b.next() {
            Some(Ok(_)) => Ok(t.max_steps.unwrap_or(1)),
            Some(Err(e)) => Err(e).with_context(ctx),
            None => bail!("{}: no training batches", path.display()),
        },
        Some(_) => {
            let mut n = 0u64;
            for batch in b {
                batch.with_context(ctx)?;
                n += 1;
            }
            let steps = n.div_ceil(t.grad_accum as u64);
            Ok(t.max_steps.map_or(steps, |m| m.min(steps)))
        }
    }
}

/// Up to `grad_accum` batches (fewer only at the very end of the data).
fn next_window(batches: &mut Batches, grad_accum: usize) -> Result<Vec<Batch>> {
    let mut w = Vec::with_capacity(grad_accum);
    for _ in 0..grad_accum {
        match batches.next() {
            Some(b) => w.push(b?),
            None => break,
        }
    }
    Ok(w)
}

/// `OUT/adapter/`, replaced as a whole: written beside it, then renamed over it.
fn write_final_adapter(out: &Path, params: &[Param], cfg: &AdapterConfig) -> Result<()> {
    let (dir, tmp) = (out.join("adapter"), out.join("adapter.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("{}: cannot remove", tmp.display()))?;
    }
    write_adapter(params, cfg, &tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("{}: cannot replace", dir.display()))?;
    }
    std::fs::rename(&tmp, &dir).with_context(|| format!("{}: cannot write", dir.display()))
}

fn progress(total: u64, start: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total).with_position(start);
    if let Ok(style) = ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {msg}  eta {eta}")
        .map(|s| s.progress_chars("=> "))
    {
        pb.set_style(style);
    }
    pb.reset_eta();
    pb
}

/// Peak resident memory of this process (`VmHWM`), in MiB; `None` off Linux.
pub fn peak_rss_mib() -> Option<f64> {
    status_mib("VmHWM:")
}

/// A memory field of `/proc/self/status` (`VmHWM:`, `VmRSS:`, ...) in MiB; `None` off Linux.
pub fn status_mib(field: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s.lines().find_map(|l| l.strip_prefix(field))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}
