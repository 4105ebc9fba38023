//! `ktrigger convert`: kube-trigger and khook definitions turned into ktrigger TriggerServices.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::ValueEnum;
use ktrigger_core::{CredentialPolicy, Engine};
use ktrigger_sources::WebhookListener;

use ktrigger_plugin::PluginManager;

use crate::offline_registry;

/// Output format of `convert`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// YAML documents separated by `---`.
    Yaml,
    /// One JSON `List` of the TriggerServices.
    Json,
}

/// Converts every file (directories: their `*.yaml`/`*.yml` files, recursively), prints the
/// TriggerServices on stdout and the report on stderr. Exits 1 when a document could not be
/// read, something could not be converted (e.g. a filter), or a converted TriggerService does not
/// validate.
pub fn convert(paths: &[PathBuf], format: Format) -> anyhow::Result<ExitCode> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let found = yaml_files(path).with_context(|| format!("{}: cannot list", path.display()))?;
            anyhow::ensure!(!found.is_empty(), "{}: no .yaml files found", path.display());
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    let registry = offline_registry(
        WebhookListener::detached(),
        ktrigger_kube::Cluster::offline_with_mappings(vec![]),
        &PluginManager::empty(),
    );
    let engine = Engine::builder().registry(registry).credentials(CredentialPolicy::offline()).build();
    let mut services = Vec::new();
    let mut failed = false;
    for file in files {
        let origin = file.display().to_string();
        let text = std::fs::read_to_string(&file).with_context(|| format!("{origin}: cannot read"))?;
        let default_name =
            file.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "triggers".to_string());
        let conversion = ktrigger_convert::convert_text(&text, &default_name);
        for note in &conversion.notes {
            let level = if note.refused { "error" } else { "note" };
            failed |= note.refused;
            eprintln!("{level}: {origin}: {note}");
        }
        for error in &conversion.errors {
            eprintln!("error: {origin}: {error}");
            failed = true;
        }
        if conversion.services.is_empty() && conversion.errors.is_empty() {
            eprintln!("note: {origin}: nothing to convert");
        }
        for service in conversion.services {
            let namespace = service.metadata.namespace.clone().unwrap_or_default();
            let name = service.metadata.name.clone().unwrap_or_default();
            for problem in engine.check(&namespace, &name, &service.spec) {
                eprintln!("error: {origin}: converted TriggerService {name:?} does not validate: {problem}");
                failed = true;
            }
            services.push(service);
        }
    }
    match format {
        Format::Yaml => {
            for (index, service) in services.iter().enumerate() {
                if index > 0 {
                    println!("---");
                }
                print!("{}", serde_yaml::to_string(service)?);
            }
        }
        Format::Json => {
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": services});
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files.extend(yaml_files(&path)?);
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            files.push(path);
        }
    }
    Ok(files)
}
