//! The training run, step by step:
//!
//! 1. [`check_output`] and [`setup`]: the output directory, the model files, the training and eval data are
//!    checked, the model is loaded and gets a fresh adapter; nothing is written yet.
//! 2. [`resume`] (with `--resume`: the parameters, AdamW's moments, the counters and the data position from
//!    the newest checkpoint) or [`fresh`].
//! 3. [`Run::begin`]: the output directory becomes the run's (`OUT/config.toml`, `OUT/metrics.jsonl`,
//!    a new events file in `OUT/tensorboard/`).
//! 4. [`Run::train`], the loop; each step: lr → maybe eval → micro-batches → clip → AdamW → log → maybe
//!    checkpoint. Ctrl-C and `--stop-after` checkpoint and stop.
//! 5. [`Run::finish`]: a last eval, a last checkpoint, `OUT/adapter/` and the summary.
//!
//! With data parallelism (`train.devices`, `--nodes`; [`super::parallel`]) every replica runs these steps
//! with its own model, on a thread of its own ([`run_parallel`]); replica 0 of node 0 alone writes.
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use burn::backend::Autodiff;
use indicatif::{ProgressBar, ProgressStyle};
use lapidary_data::{Batch, Batches, ChatTemplate};
use lapidary_model::peft::adapter::{init_lora, AdapterConfig};
use lapidary_model::GemmaBackend;
use lapidary_model::{Gemma, ModelFiles};

use super::checkpoint::{self, dropout_seed, RngState, TrainState};
use super::config::Recipe;
use super::memory::peak_rss_mib;
use super::metrics::{Metrics, Row};
use super::optim::{AdamW, AdamWConfig};
use super::parallel::collective::Group;
use super::parallel::replica::{checksum, Replica};
use super::parallel::star::{NodeSpec, Star};
use super::parallel::{device_at, spawn_replicas, World};
use super::params::{write_adapter, Param, Params};
use super::schedule::Schedule;
use super::step::{check_finite, train_step, StepStats};
use super::tensorboard::TensorBoard;
use crate::common::{BackendKind, Quant};
use crate::eval::during_training::{EvalSet, Scores};

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Continue from the newest complete checkpoint in `OUT/checkpoints`.
    pub resume: bool,
    /// Replace an earlier run in the output directory.
    pub overwrite: bool,
    /// Checkpoint and stop after this many optimizer steps (as Ctrl-C does).
    pub stop_after: Option<u64>,
    /// Several processes (`--nodes`); `None`: this process is the whole run.
    pub nodes: Option<Nodes>,
}

/// `--nodes M --node-rank R --coordinator HOST:PORT`.
#[derive(Debug, Clone)]
pub struct Nodes {
    pub count: usize,
    pub rank: usize,
    pub coordinator: String,
    pub connect_timeout: Duration,
}

/// The run's replicas: `train.devices` in this process (CPU backends have one device: the count), and the
/// nodes.
fn world_of(recipe: &Recipe, opts: &Options) -> World {
    let backend: BackendKind = recipe.train.backend.into();
    let mut devices = recipe.train.devices.indices();
    if backend != BackendKind::Cuda {
        devices.iter_mut().for_each(|d| *d = 0);
    }
    let mut w = World { devices, ..World::single() };
    if let Some(n) = &opts.nodes {
        (w.nodes, w.node_rank, w.coordinator, w.connect_timeout) =
            (n.count, n.rank, Some(n.coordinator.clone()), n.connect_timeout);
    }
    w
}

pub fn run(recipe: &Recipe, opts: &Options) -> Result<()> {
    let backend: BackendKind = recipe.train.backend.into();
    crate::common::dispatch!(backend, run_on, recipe, opts)
}

/// The run on backend `B` (the steps of the module docs).
fn run_on<B: GemmaBackend>(recipe: &Recipe, opts: &Options) -> Result<()> {
    let world = world_of(recipe, opts);
    if world.size() == 1 {
        return replica::<B>(recipe, opts, &world, None);
    }
    run_parallel::<B>(recipe, opts, world)
}

/// One replica's run (the whole run without data parallelism: `par` is `None`).
fn replica<B: GemmaBackend>(recipe: &Recipe, opts: &Options, world: &World, mut par: Option<Replica<B>>) -> Result<()> {
    let resume_from = check_output(&recipe.output.dir, opts)?;
    let device = match &par {
        Some(p) => p.device.clone(),
        None => device_at::<B>(world.devices[0])?,
    };
    let writer = par.as_ref().is_none_or(|p| p.rank == 0);
    let mut setup = setup::<B>(recipe, world.size(), device, writer)?;
    let start = match &resume_from {
        Some((_, dir)) => resume(recipe, dir, &mut setup, world.size())?,
        None => fresh(recipe, &setup, world.size())?,
    };
    if let Some(p) = &mut par {
        // Every replica starts from the same recipe (output.dir may differ between machines), step, plan and
        // parameters, or none starts.
        let mut same = recipe.clone();
        same.output.dir = PathBuf::new();
        let step = start.state.step;
        let values =
            [crc32c::crc32c(same.to_toml()?.as_bytes()), step as u32, (step >> 32) as u32, setup.total_steps as u32];
        p.check_same(&values, "recipe, resume step or step count")?;
        p.check_same(&[checksum(&setup.params)], "parameters at the start")?;
    }
    let mut run = Run::begin(recipe, opts, setup, start, resume_from.map(|(s, _)| s), par)?;
    let ended = run.train()?;
    if let Some(p) = &mut run.par {
        p.group.finish()?;
    }
    match ended {
        Ended::Stopped => Ok(()),
        Ended::Done => run.finish(),
    }
}

/// A data-parallel run: this process's replicas, each on a thread of its own with its share of the cores
/// ([`spawn_replicas`]), joined to the other nodes first. The first replica to fail fails the process (the others are waiting for it in an all-reduce), and
/// the other nodes are told why.
fn run_parallel<B: GemmaBackend>(recipe: &Recipe, opts: &Options, world: World) -> Result<()> {
    for &d in &world.devices {
        device_at::<B>(d)?;
    }
    // Nothing is loaded or written before every node has joined.
    let star = match &world.coordinator {
        Some(coordinator) if world.nodes > 1 => Some(Arc::new(Star::connect(NodeSpec {
            nodes: world.nodes,
            node_rank: world.node_rank,
            devices: world.devices.len(),
            coordinator: coordinator.clone(),
            connect_timeout: world.connect_timeout,
        })?)),
        _ => None,
    };
    let n = world.devices.len();
    // The global pool's size: the cores, or RAYON_NUM_THREADS where several processes share a machine.
    let cores = rayon::current_num_threads();
    let threads = (cores / n).max(1);
    let (recipe, opts, w, links) = (recipe.clone(), opts.clone(), world.clone(), star.clone());
    let rx = spawn_replicas(n, threads, move |local| {
        let device = device_at::<B>(w.devices[local])?;
        let group = Group::<B>::join(local, n, device.clone(), links.clone())?;
        let rep = Replica { rank: w.rank(local), world: w.size(), group: Box::new(group), device };
        replica::<B>(&recipe, &opts, &w, Some(rep))
    })?;
    let mut result = Ok(());
    for _ in 0..n {
        let (local, r) = rx.recv().context("a replica thread ended without a result")?;
        if let Err(e) = r {
            result = Err(e.context(format!("rank {}", world.rank(local))));
            break;
        }
    }
    if let Some(star) = &star {
        match &result {
            Ok(()) => star.finish(),
            Err(e) => star.fail(&format!("{e:#}")),
        }
    }
    result
}

/// What [`setup`] reads and builds, before anything is written.
struct Setup<B: GemmaBackend> {
    /// The model with its adapter: freshly initialised; [`resume`] puts a checkpoint's values in.
    model: Gemma<Autodiff<B>>,
    params: Params<B>,
    device: B::Device,
    tokenizer: tokenizers::Tokenizer,
    /// The checkpoint's chat template for `messages` rows; `None`: the data crate's built-in Gemma template.
    chat_template: Option<ChatTemplate>,
    /// The model's decoder layers (for the opening line).
    layers: usize,
    /// Optimizer steps planned ([`plan_steps`]).
    total_steps: u64,
    eval_set: Option<EvalSet>,
    adapter_cfg: AdapterConfig,
    opt_cfg: AdamWConfig,
    /// The resolved recipe, written to `OUT/config.toml` and into every checkpoint.
    recipe_toml: String,
}

/// Opens the model files, checks the training data (counting the steps of `world` replicas) and reads the
/// eval set (for the `writer` only: it alone evaluates), then loads the model (quantized as the recipe says)
/// onto `device` and adds a freshly initialised LoRA adapter.
fn setup<B: GemmaBackend>(recipe: &Recipe, world: usize, device: B::Device, writer: bool) -> Result<Setup<B>> {
    let t = &recipe.train;
    // Model files and data are checked before anything is written.
    let files =
        ModelFiles::open(&recipe.model.path).with_context(|| format!("model.path {}", recipe.model.path.display()))?;
    let ModelFiles { config: model_config, weights, tokenizer, .. } = files;
    let chat_template = ChatTemplate::for_model(&recipe.model.path)
        .with_context(|| format!("model.path {}", recipe.model.path.display()))?;
    let total_steps = plan_steps(recipe, &tokenizer, chat_template.as_ref(), world)?;
    let eval_set = match writer {
        true => EvalSet::load(recipe, &tokenizer, chat_template.as_ref(), &model_config.eos_token_ids)?,
        false => None,
    };
    let quant: Quant = recipe.model.quant();
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
    )
    .with_target_parameters(&l.target_parameters)
    .with_dora(l.use_dora);
    init_lora(&mut model, &adapter_cfg, t.seed)?;
    let params = Params::read(&mut model);
    let opt_cfg =
        AdamWConfig { beta1: t.adam_beta1, beta2: t.adam_beta2, eps: t.adam_eps, weight_decay: t.weight_decay };
    let recipe_toml = recipe.to_toml()?;
    Ok(Setup {
        model,
        params,
        device,
        tokenizer,
        chat_template,
        layers: model_config.num_hidden_layers,
        total_steps,
        eval_set,
        adapter_cfg,
        opt_cfg,
        recipe_toml,
    })
}

/// Where the loop starts: the optimizer, the counters and the training data.
struct Start<B: GemmaBackend> {
    opt: AdamW<B>,
    state: TrainState,
    batches: Batches,
}

/// A new run of `world` replicas: zero moments, step 0, the data from its beginning.
fn fresh<B: GemmaBackend>(recipe: &Recipe, setup: &Setup<B>, world: usize) -> Result<Start<B>> {
    let batches = train_batches(recipe, &setup.tokenizer)?.with_chat_template(setup.chat_template.clone());
    let state = TrainState {
        step: 0,
        data: batches.position(),
        rng: RngState { seed: recipe.train.seed },
        tokens_seen: 0,
        train_seconds: 0.0,
        world,
    };
    Ok(Start { opt: AdamW::new(setup.opt_cfg, setup.params.len(), &setup.device), state, batches })
}

/// Continues from checkpoint `dir`, whose recipe must agree with this one ([`Recipe::resume_mismatch`]): the
/// parameters (put into the model too), AdamW's moments, the counters and the data position. The number of
/// replicas must be the checkpoint's: with another, the steps would take other micro-batches.
fn resume<B: GemmaBackend>(recipe: &Recipe, dir: &Path, setup: &mut Setup<B>, world: usize) -> Result<Start<B>> {
    let old_path = dir.join("config.toml");
    let old_text = std::fs::read_to_string(&old_path)
        .with_context(|| format!("{}: cannot resume from this checkpoint", old_path.display()))?;
    let old = Recipe::parse(&old_text, &old_path, &[])?;
    if let Some(key) = recipe.resume_mismatch(&old) {
        bail!(
            "--resume: `{key}` differs from the run in {} ({}); resume with the same recipe or start a new \
             output.dir",
            recipe.output.dir.display(),
            dir.join("config.toml").display()
        );
    }
    let ck = checkpoint::load(dir, &setup.params, setup.opt_cfg, &setup.device)?;
    if ck.state.world != world {
        bail!(
            "--resume: {} was written by a run of {} replica(s) and this one has {world} (train.devices × \
             --nodes); a step takes train.grad_accum × replicas micro-batches and sums the replicas' \
             gradients, so another count would not continue that run. Resume with {} replica(s)",
            dir.display(),
            ck.state.world,
            ck.state.world
        );
    }
    setup.params = ck.params;
    setup.params.write(&mut setup.model, false);
    let batches =
        Batches::resume_spec(recipe.train_spec(), setup.tokenizer.clone(), recipe.train_data(), &ck.state.data)
            .with_context(|| format!("training data {}", recipe.train_label()))?
            .with_chat_template(setup.chat_template.clone());
    Ok(Start { opt: ck.opt, state: ck.state, batches })
}

/// Makes the output directory the run's: with `--overwrite` the earlier run's checkpoints and adapter go;
/// then `OUT/config.toml` (the run's first write).
fn take_output(out: &Path, recipe_toml: &str, overwrite: bool) -> Result<()> {
    if overwrite {
        for p in ["checkpoints", "adapter", "tensorboard"] {
            let p = out.join(p);
            if p.exists() {
                std::fs::remove_dir_all(&p).with_context(|| format!("{}: cannot remove", p.display()))?;
            }
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("output.dir {}: cannot create", out.display()))?;
    std::fs::write(out.join("config.toml"), recipe_toml)
        .with_context(|| format!("{}: cannot write", out.join("config.toml").display()))?;
    Ok(())
}

/// A flag Ctrl-C sets (the loop then checkpoints and stops); a second Ctrl-C kills at once. One per process:
/// the replicas of a process share it.
fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    STOP.get_or_init(|| {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
        stop
    })
    .clone()
}

/// How [`Run::train`] ended.
enum Ended {
    /// All planned steps done, or the data ran out: [`Run::finish`] follows.
    Done,
    /// Stopped early (Ctrl-C, `--stop-after`) after a checkpoint; the run continues with `--resume`.
    Stopped,
}

/// A run under way: what the loop reads and updates.
struct Run<'a, B: GemmaBackend> {
    recipe: &'a Recipe,
    opts: &'a Options,
    out: &'a Path,
    model: Gemma<Autodiff<B>>,
    params: Params<B>,
    opt: AdamW<B>,
    state: TrainState,
    batches: Batches,
    eval_set: Option<EvalSet>,
    adapter_cfg: AdapterConfig,
    recipe_toml: String,
    total_steps: u64,
    schedule: Schedule,
    /// `OUT/metrics.jsonl`; `None` on a replica that does not write.
    metrics: Option<Metrics>,
    /// `OUT/tensorboard/` (`output.tensorboard`).
    tensorboard: Option<TensorBoard>,
    pb: ProgressBar,
    stop: Arc<AtomicBool>,
    /// The step of the newest checkpoint written.
    last_ckpt: Option<u64>,
    /// The newest evaluation and train loss, for the summary.
    last_eval: Option<Scores>,
    last_loss: Option<f64>,
    /// Data parallelism: this replica's rank and its way to the others.
    par: Option<Replica<B>>,
}

impl<'a, B: GemmaBackend> Run<'a, B> {
    /// Takes the output directory ([`take_output`]), opens `OUT/metrics.jsonl` (kept up to `resumed_at`),
    /// installs the Ctrl-C handler and says what is trained. A replica other than rank 0 writes nothing.
    fn begin(
        recipe: &'a Recipe,
        opts: &'a Options,
        setup: Setup<B>,
        start: Start<B>,
        resumed_at: Option<u64>,
        par: Option<Replica<B>>,
    ) -> Result<Self> {
        let (t, out) = (&recipe.train, recipe.output.dir.as_path());
        let writer = par.as_ref().is_none_or(|p| p.rank == 0);
        let (metrics, tensorboard) = if writer {
            // From here on the output directory is ours.
            take_output(out, &setup.recipe_toml, opts.overwrite)?;
            let metrics = Metrics::open(out, resumed_at)?;
            let tensorboard = match recipe.output.tensorboard {
                true => Some(TensorBoard::open(out, resumed_at, &metrics.rows)?),
                false => None,
            };
            (Some(metrics), tensorboard)
        } else {
            (None, None)
        };
        let stop = stop_on_ctrl_c();

        let n_params = setup.params.len();
        let total_steps = setup.total_steps;
        let schedule = Schedule { kind: t.scheduler, lr: t.lr, warmup: t.warmup_steps, total: total_steps };
        let pb = if writer { progress(total_steps, start.state.step) } else { ProgressBar::hidden() };
        let replicas = par.as_ref().map(|p| p.world);
        let run = Run {
            recipe,
            opts,
            out,
            model: setup.model,
            params: setup.params,
            opt: start.opt,
            state: start.state,
            batches: start.batches,
            eval_set: setup.eval_set,
            adapter_cfg: setup.adapter_cfg,
            recipe_toml: setup.recipe_toml,
            total_steps,
            schedule,
            metrics,
            tensorboard,
            pb,
            stop,
            last_ckpt: resumed_at,
            last_eval: None,
            last_loss: None,
            par,
        };
        // The first line; it says what computes (on CPUs, whether bf16 runs on the bf16 instruction).
        let backend: BackendKind = recipe.train.backend.into();
        run.say(format!(
            "training {} ({} layers, quant {:?}, {}: {}) with {} LoRA parameters for {} steps{}{}",
            recipe.model.path.display(),
            setup.layers,
            recipe.model.quant(),
            backend.name(),
            backend.compute_path(recipe.model.compute_dtype.into()),
            n_params,
            total_steps,
            match replicas {
                Some(n) => format!(" on {n} replicas"),
                None => String::new(),
            },
            match resumed_at {
                Some(s) => format!(", resuming at step {s}"),
                None => String::new(),
            }
        ));
        Ok(run)
    }

    /// The optimizer steps, until `total_steps`, the end of the data, or a stop (Ctrl-C, `--stop-after`),
    /// which checkpoints first.
    fn train(&mut self) -> Result<Ended> {
        let (recipe, total_steps) = (self.recipe, self.total_steps);
        let t = &recipe.train;
        while self.state.step < total_steps {
            let step = self.state.step;
            let lr = self.schedule.lr_at(step);
            if step == 0 || (t.eval_every > 0 && step.is_multiple_of(t.eval_every)) {
                if let Some(s) = self.evaluate(step)? {
                    self.say(format!("step {step}: {}", s.line()));
                    self.last_eval = Some(s);
                }
            }
            let replicas = self.par.as_ref().map_or(1, |p| p.world);
            let window = next_window(&mut self.batches, t.grad_accum * replicas)
                .with_context(|| format!("training data {}", recipe.train_label()))?;
            if window.is_empty() {
                break; // the epochs ran out a little before the planned step count
            }
            let t0 = Instant::now();
            let seed = t.seed;
            let gc = t.gradient_checkpointing;
            let (model, params, opt) = (&mut self.model, &mut self.params, &mut self.opt);
            // Without data parallelism the stop flag is read after the step; with it, every replica's flag
            // as the step's all-reduce summed them, so all stop after the same step.
            let (r, stop_all) = match &mut self.par {
                None => (
                    train_step(model, params, opt, &window, lr, t.max_grad_norm, gc, |micro| {
                        dropout_seed(seed, step, micro)
                    }),
                    None,
                ),
                Some(p) => {
                    let s = p.step(
                        model,
                        params,
                        opt,
                        &window,
                        lr,
                        t.max_grad_norm,
                        gc,
                        |micro| dropout_seed(seed, step, micro),
                        self.stop.load(Ordering::SeqCst),
                    )?;
                    (s.stats, Some(s.stop))
                }
            };
            let stats = check_finite(step + 1, r, self.last_ckpt)?;
            let dt = t0.elapsed().as_secs_f64();
            self.state.step = step + 1;
            self.state.data = self.batches.position();
            self.state.tokens_seen += stats.tokens as u64;
            self.state.train_seconds += dt;
            self.report_step(lr, &stats, dt)?;
            let stopping = stop_all.unwrap_or_else(|| self.stop.load(Ordering::SeqCst))
                || self.opts.stop_after.is_some_and(|n| self.state.step >= n);
            if stopping || (t.save_every > 0 && self.state.step.is_multiple_of(t.save_every)) {
                self.save()?;
                self.last_ckpt = Some(self.state.step);
            }
            if stopping && self.state.step < total_steps {
                if !self.writer() {
                    return Ok(Ended::Stopped);
                }
                self.pb.abandon();
                eprintln!(
                    "stopped after step {} of {total_steps}; checkpoint saved in {}. Continue with: lapidary train \
                     CONFIG --resume",
                    self.state.step,
                    checkpoint::checkpoints_dir(self.out).join(format!("step-{}", self.state.step)).display()
                );
                return Ok(Ended::Stopped);
            }
        }
        Ok(Ended::Done)
    }

    /// The step just taken (now `state.step`) in `OUT/metrics.jsonl` and on the progress bar (a line on stderr
    /// without one).
    /// With data parallelism the tokens are every replica's (the global tokens/s).
    fn report_step(&mut self, lr: f64, stats: &StepStats, dt: f64) -> Result<()> {
        self.last_loss = Some(stats.loss);
        if !self.writer() {
            return Ok(());
        }
        let tps = stats.tokens as f64 / dt.max(1e-9);
        let replicas = self.par.as_ref().map(|p| p.world);
        self.log(Row::Train {
            step: self.state.step,
            loss: stats.loss,
            lr,
            grad_norm: stats.grad_norm,
            tokens: stats.tokens,
            tokens_per_s: tps,
            replicas,
        })?;
        let on = replicas.map_or(String::new(), |n| format!(" on {n} replicas"));
        self.pb.set_position(self.state.step);
        self.pb.set_message(format!("loss {:.4}  lr {lr:.2e}  {tps:.0} tok/s{on}", stats.loss));
        if self.pb.is_hidden() {
            eprintln!(
                "step {}/{}: loss {:.4}  lr {lr:.3e}  grad_norm {:.3}  {tps:.0} tok/s{on}",
                self.state.step, self.total_steps, stats.loss, stats.grad_norm
            );
        }
        Ok(())
    }

    /// Whether this replica writes (rank 0, or the only one).
    fn writer(&self) -> bool {
        self.par.as_ref().is_none_or(|p| p.rank == 0)
    }

    /// A last evaluation, a last checkpoint (unless the last step has one), `OUT/adapter/`, and the summary:
    /// a line on stderr, one JSON object on stdout.
    fn finish(mut self) -> Result<()> {
        if !self.writer() {
            return Ok(());
        }
        let out = self.out;
        if let Some(s) = self.evaluate(self.state.step)? {
            self.last_eval = Some(s);
        }
        if self.last_ckpt != Some(self.state.step) {
            self.save()?;
        } else if let Some(Err(e)) = self.metrics.as_ref().map(|m| m.plot(out)) {
            self.say(format!("warning: loss.png not drawn: {e}"));
        }
        write_final_adapter(out, &self.params.to_host(), &self.adapter_cfg)?;
        self.pb.finish_and_clear();
        let state = &self.state;
        let tps = state.tokens_seen as f64 / state.train_seconds.max(1e-9);
        let eval = self.last_eval.unwrap_or_default();
        eprintln!(
            "done: {} steps, train loss {}, {}, {tps:.0} tokens/s; adapter in {}",
            state.step,
            self.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
            if self.last_eval.is_some() { eval.line() } else { "no eval set".to_string() },
            out.join("adapter").display()
        );
        let mut summary = serde_json::json!({
            "steps": state.step,
            "train_loss": self.last_loss,
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

    /// A line above the progress bar (on stderr when there is no bar).
    fn say(&self, msg: String) {
        if !self.writer() {
            return;
        }
        if self.pb.is_hidden() {
            eprintln!("{msg}");
        } else {
            self.pb.println(msg);
        }
    }

    /// The eval set's metrics at `step`, logged to `OUT/metrics.jsonl`; `None` when the recipe has no eval set.
    fn evaluate(&mut self, step: u64) -> Result<Option<Scores>> {
        let Some(set) = &self.eval_set else { return Ok(None) };
        let scores = set.run(&self.model, step)?;
        self.log(Row::eval(step, &scores))?;
        Ok(Some(scores))
    }

    /// A row in `OUT/metrics.jsonl` and, with `output.tensorboard`, in the run's TensorBoard events file.
    fn log(&mut self, row: Row) -> Result<()> {
        if let Some(tb) = &mut self.tensorboard {
            tb.log(&row)?;
        }
        match &mut self.metrics {
            Some(m) => m.log(row),
            None => Ok(()),
        }
    }

    /// A checkpoint of the run as it is, and `OUT/loss.png` redrawn (failing to draw only warns).
    fn save(&self) -> Result<()> {
        let Some(metrics) = self.metrics.as_ref().filter(|_| self.writer()) else { return Ok(()) };
        let keep = self.recipe.train.keep_checkpoints;
        checkpoint::save(self.out, &self.state, &self.params, &self.opt, &self.adapter_cfg, &self.recipe_toml, keep)?;
        if let Err(e) = metrics.plot(self.out) {
            self.say(format!("warning: loss.png not drawn: {e}"));
        }
        Ok(())
    }
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
/// `grad_accum × world` (one pass over the data to count them), whichever is smaller. Also proves the data yields
/// at least one batch before anything is written.
fn plan_steps(
    recipe: &Recipe,
    tokenizer: &tokenizers::Tokenizer,
    chat_template: Option<&ChatTemplate>,
    world: usize,
) -> Result<u64> {
    let t = &recipe.train;
    let label = recipe.train_label();
    let ctx = || format!("training data {label}");
    let mut b = train_batches(recipe, tokenizer)?.with_chat_template(chat_template.cloned());
    match t.epochs {
        None => match b.next() {
            Some(Ok(_)) => Ok(t.max_steps.unwrap_or(1)),
            Some(Err(e)) => Err(e).with_context(ctx),
            None => bail!("{label}: no training batches"),
        },
        Some(_) => {
            let mut n = 0u64;
            for batch in b {
                batch.with_context(ctx)?;
                n += 1;
            }
            let steps = n.div_ceil((t.grad_accum * world) as u64);
            Ok(t.max_steps.map_or(steps, |m| m.min(steps)))
        }
    }
}

/// The training batches from the start: `data.train` or the `data.sources` mixture, without the rows
/// `data.eval_split` holds out.
fn train_batches(recipe: &Recipe, tokenizer: &tokenizers::Tokenizer) -> Result<Batches> {
    let special = lapidary_data::SpecialTokens::from_tokenizer(tokenizer)?;
    Batches::from_spec(recipe.train_spec(), tokenizer.clone(), special, recipe.train_data())
        .with_context(|| format!("training data {}", recipe.train_label()))
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
