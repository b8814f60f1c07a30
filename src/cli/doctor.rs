//! `trainyard migrate` and `trainyard doctor`.
use crate::config::{DeviceSetting, Settings};

pub async fn migrate() -> anyhow::Result<()> {
    let (_, pool) = crate::start(true).await?;
    let (applied, known) = crate::db::migration_state(&pool).await?;
    println!("migrations applied: {applied}/{known} (plus apalis's in schema apalis)");
    Ok(())
}

pub async fn doctor() -> anyhow::Result<()> {
    let settings = Settings::load(&Settings::default_dir())?;
    println!("config       {}", Settings::default_dir().display());
    println!("libtorch     {}", crate::ml::libtorch_version());
    let cuda = crate::ml::cuda_devices();
    if cuda > 0 {
        println!(
            "cuda         {cuda} device(s); cudnn {}",
            crate::ml::cudnn_available()
        );
    } else {
        println!("cuda         none (CPU only)");
    }
    // What a `train` job with device=auto and the served models would use on this machine.
    let device = crate::ml::text_encoder::pick_device(DeviceSetting::Auto);
    println!(
        "device       {} for training and inference with device=auto (local_model.device = {})",
        format!("{device:?}").to_lowercase(),
        settings.local_model.device
    );
    let mut healthy = true;
    match crate::db::connect(&settings.database).await {
        Ok(pool) => {
            let version: String = sqlx::query_scalar("SHOW server_version")
                .fetch_one(&pool)
                .await
                .unwrap_or_default();
            println!("database     ok (PostgreSQL {version})");
            match crate::db::migration_state(&pool).await {
                Ok((applied, known)) if applied == known => {
                    println!("migrations   {applied}/{known} applied")
                }
                Ok((applied, known)) => {
                    healthy = false;
                    println!("migrations   {applied}/{known} applied: run `trainyard migrate`")
                }
                Err(e) => println!("migrations   unknown: {e}"),
            }
        }
        Err(e) => {
            healthy = false;
            println!("database     UNREACHABLE: {e:#}");
        }
    }
    for (key, m) in &settings.embedding_models {
        let detail = if m.is_local() {
            match crate::embedding::local_checkpoint(&settings, key) {
                Ok(c) => {
                    let config =
                        crate::ml::encoder::EncoderConfig::from_file(&c.dir.join("config.json"));
                    let ok = crate::ml::encoder::checkpoint_file(&c.dir).is_ok()
                        && c.dir.join("tokenizer.json").exists()
                        && config.is_ok();
                    if !ok {
                        healthy = false;
                    }
                    let family = match &config {
                        Ok(config) => format!(
                            "{} ({} layers, width {}, longest input {} tokens, max_tokens {})",
                            config.family.name,
                            config.shape.num_layers,
                            config.shape.hidden_size,
                            config.shape.max_input_tokens,
                            m.max_tokens
                        ),
                        Err(e) => format!("UNSUPPORTED: {e:#}"),
                    };
                    format!(
                        "local {family}, {} pooling{}, weights {}",
                        c.pooling.pooling.as_str(),
                        if c.pooling.normalize { " + L2" } else { "" },
                        if ok {
                            format!("found in {}", c.dir.display())
                        } else {
                            format!("MISSING in `{}`", c.dir.display())
                        }
                    )
                }
                Err(e) => {
                    healthy = false;
                    format!("local, UNAVAILABLE: {e}")
                }
            }
        } else {
            format!(
                "{} {}, key {}",
                m.provider.type_name(),
                m.provider.api_endpoint().unwrap_or("?"),
                match m.provider.api_key_env() {
                    Some(var) if std::env::var(var).is_ok() => format!("${var} set"),
                    Some(var) => format!("${var} not set"),
                    None => "not needed".into(),
                }
            )
        };
        println!("model        {key}: {} dims, {detail}", m.dimensions);
    }
    if !healthy {
        anyhow::bail!("doctor found problems (see above)");
    }
    Ok(())
}
