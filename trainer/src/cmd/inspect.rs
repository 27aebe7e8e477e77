//! `lapidary inspect`: what the model is and where its memory goes.
use anyhow::Result;
use clap::Args;
use lapidary_model::gemma::linears;
use lapidary_model::gemma::model::other_linears;
use lapidary_model::GemmaBackend;
use serde_json::json;

use crate::common::{load, ModelArgs};

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub json: bool,
}

fn run_on<B: GemmaBackend>(a: InspectArgs) -> Result<()> {
    let loaded = load::<B>(&a.model)?;
    let m = &loaded.model;
    let c = &m.config;
    let embed = c.vocab_size * c.hidden_size;
    // Every learned vector: the norms' weights (Gemma 4's value norms and router norms have none), Gemma 4's
    // router scales. `layer_scalar` is a buffer, not a parameter (transformers does not count it either).
    let vec_len = |n: &Option<lapidary_model::nn::norm::RmsNorm<B>>, learned: bool| match n {
        Some(n) if learned => n.scale.dims()[0],
        _ => 0,
    };
    let h = c.hidden_size;
    let norms: usize = m
        .layers
        .iter()
        .map(|l| {
            let a = &l.self_attn;
            let qk = vec_len(&a.q_norm, true) + vec_len(&a.k_norm, true);
            let n = 2 + l.pre_feedforward_layernorm.iter().count() + l.post_feedforward_layernorm.iter().count();
            let ple = l.per_layer.as_ref().map_or(0, |_| h);
            let moe = l.moe.as_ref().map_or(0, |e| 3 * h + h + e.router.per_expert_scale.len());
            n * h + qk + ple + moe
        })
        .sum::<usize>()
        + h
        + m.per_layer.as_ref().map_or(0, |p| p.dim);
    let (mut lin_params, mut lin_bytes, mut lora_params) = (0usize, 0usize, 0usize);
    for (_, l) in linears(m).into_iter().chain(other_linears(m)) {
        let [o, i] = l.base.shape();
        lin_params += o * i * l.base.experts();
        lin_bytes += l.base.resident_bytes();
        if let Some(ad) = &l.adapter {
            lora_params += ad.trainables().iter().map(|(_, t)| t.shape().num_elements()).sum::<usize>();
        }
    }
    let (ple_params, ple_bytes) = match &m.per_layer {
        Some(p) => {
            let [v, w] = p.table.dims();
            (v * w, p.table.resident_bytes())
        }
        None => (0, 0),
    };
    let total = embed + ple_params + norms + lin_params;
    let embed_bytes = m.embed_tokens.resident_bytes() + ple_bytes;
    let layer_types: Vec<&str> =
        c.layer_types.iter().map(|t| if *t == lapidary_model::LayerType::Full { "full" } else { "sliding" }).collect();
    let v = json!({
        "model_type": c.arch.model_type(),
        "layers": c.num_hidden_layers, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads, "head_dim": c.head_dim,
        "vocab_size": c.vocab_size, "sliding_window": c.sliding_window, "layer_types": layer_types,
        "attn_logit_softcapping": c.attn_logit_softcapping, "final_logit_softcapping": c.final_logit_softcapping,
        "experts": c.moe.map(|e| json!({"num": e.experts, "top_k": e.top_k, "intermediate": e.intermediate})),
        "per_layer_input": c.per_layer_input.map(|p| p.hidden),
        "quant": format!("{:?}", a.model.quant()).to_lowercase(),
        "parameters": { "total": total, "embedding": embed, "per_layer_embedding": ple_params, "norms": norms,
                        "linear": lin_params, "lora": lora_params },
        "resident_bytes": { "embedding": embed_bytes, "norms": norms * 4, "linear": lin_bytes, "lora": lora_params * 4,
                            "total": embed_bytes + norms * 4 + lin_bytes + lora_params * 4 },
    });
    if a.json {
        crate::common::print_json(&v);
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

pub fn run(a: InspectArgs) -> Result<()> {
    crate::common::dispatch!(a.model.backend, run_on, a)
}
