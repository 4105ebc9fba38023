//! Loading TriggerService documents from files and directories for `run` and `validate`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ktrigger_api::{Document, TriggerServiceSpec, parse_documents};

/// A TriggerService read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedService {
    /// Where it came from: `path#document`.
    pub origin: String,
    /// Its namespace (empty when the document has none).
    pub namespace: String,
    /// Its name (the file name for plain `triggers:` files).
    pub name: String,
    /// Its spec as written.
    pub spec: TriggerServiceSpec,
}

/// Everything read from a set of paths: the services, the errors, and the documents skipped.
#[derive(Debug, Default)]
pub struct LoadedConfig {
    /// TriggerServices that parsed.
    pub services: Vec<LoadedService>,
    /// Problems that make a file or document unusable, each naming file and document.
    pub errors: Vec<String>,
    /// Documents of other kinds that were skipped.
    pub warnings: Vec<String>,
}

/// Reads files, and the `*.yaml`/`*.yml` files of directories (recursively, sorted by name).
pub fn load_paths(paths: &[PathBuf]) -> LoadedConfig {
    let mut config = LoadedConfig::default();
    let (files, errors) = expand_paths(paths);
    config.errors.extend(errors.into_iter().map(|(path, message)| format!("{path}: {message}")));
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => add_text(&mut config, &file.display().to_string(), &default_name(&file), &text),
            Err(e) => config.errors.push(format!("{}: cannot read: {e}", file.display())),
        }
    }
    config
}

/// Reads YAML text that came from `origin` (e.g. an embedded default).
pub fn load_text(origin: &str, text: &str) -> LoadedConfig {
    let mut config = LoadedConfig::default();
    add_text(&mut config, origin, origin, text);
    config
}

fn add_text(config: &mut LoadedConfig, origin: &str, default_name: &str, text: &str) {
    let mut seen: HashSet<(String, String)> =
        config.services.iter().map(|s| (s.namespace.clone(), s.name.clone())).collect();
    let documents = parse_documents(text, default_name);
    if documents.is_empty() {
        config.errors.push(format!("{origin}: no documents"));
    }
    for document in documents {
        match document {
            Ok(Document { index, name, namespace, spec }) => {
                if spec.worker.is_some() {
                    config.warnings.push(format!(
                        "{origin}: document {index}: spec.worker: kube-trigger's worker settings are not used: every \
                         trigger runs in its own task with a delivery queue per destination (retries, timeouts and \
                         queue sizes are set per destination); `ktrigger convert` drops them"
                    ));
                }
                let namespace = namespace.unwrap_or_default();
                if !seen.insert((namespace.clone(), name.clone())) {
                    config.errors.push(format!(
                        "{origin}: document {index}: TriggerService {name:?} is defined twice; names must be unique"
                    ));
                    continue;
                }
                config.services.push(LoadedService { origin: format!("{origin}#{index}"), namespace, name, spec });
            }
            Err(e) if e.is_other_kind() => config.warnings.push(format!("{origin}: {e}")),
            Err(e) => config.errors.push(format!("{origin}: {e}")),
        }
    }
}

/// The files `paths` stand for: files as given, and the `*.yaml`/`*.yml` files of directories
/// (recursively, sorted by name); and each directory that could not be listed or holds no YAML,
/// with the reason.
pub fn expand_paths(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<(String, String)>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        if path.is_dir() {
            match yaml_files(path) {
                Ok(found) if found.is_empty() => {
                    errors.push((path.display().to_string(), "no .yaml files found".into()))
                }
                Ok(found) => files.extend(found),
                Err(e) => errors.push((path.display().to_string(), e.to_string())),
            }
        } else {
            files.push(path.clone());
        }
    }
    (files, errors)
}

/// The name of a plain `triggers:` file's TriggerService: the file name without extension.
pub fn default_name(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "triggers".to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    const UPSTREAM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/upstream/kube-trigger");

    #[test]
    fn upstream_kube_trigger_files_parse() {
        let dir = Path::new(UPSTREAM);
        assert!(dir.is_dir(), "upstream examples expected at {UPSTREAM}");
        let config = load_paths(&[dir.to_path_buf()]);
        assert!(config.errors.is_empty(), "{:#?}", config.errors);
        let names: Vec<_> = config.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "conf-bump-app",
                "conf-create-event-listener",
                "conf-cronjob",
                "conf-record-event",
                "kubetrigger-sample-config",
                "record-event"
            ]
        );
        // sample.yaml holds ConfigMaps, Applications and an EventListener: skipped, not errors;
        // triggerservice-record-event.yaml's worker settings are said to be unused.
        assert_eq!(config.warnings.len(), 6, "{:#?}", config.warnings);
        assert!(
            config.warnings[5].ends_with(
                "triggerservice-record-event.yaml: document 1: spec.worker: kube-trigger's worker settings are not \
                 used: every trigger runs in its own task with a delivery queue per destination (retries, timeouts \
                 and queue sizes are set per destination); `ktrigger convert` drops them"
            ),
            "{:#?}",
            config.warnings
        );
        let cron = &config.services[2].spec.triggers[0];
        assert_eq!(cron.source.type_name, "cronjob");
        assert!(cron.action.is_none(), "an empty `action:` reads as absent");
    }

    #[test]
    fn errors_name_the_file_and_document() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, "triggers:\n- source: {type: cron}\n  action: {type: log}\n---\ntriggers: 3\n").unwrap();
        let config = load_paths(std::slice::from_ref(&path));
        assert_eq!(config.errors.len(), 1, "{:#?}", config.errors);
        assert!(
            config.errors[0].starts_with(&format!("{}: document 2: triggers:", path.display())),
            "{}",
            config.errors[0]
        );
        assert_eq!(config.services.len(), 1);
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let config = load_paths(&[PathBuf::from("/nonexistent/triggers.yaml")]);
        assert!(config.errors[0].contains("cannot read"), "{:?}", config.errors);
    }

    #[test]
    fn duplicate_services_are_refused() {
        let text = "apiVersion: ktrigger.dev/v1alpha1\nkind: TriggerService\nmetadata: {name: a}\nspec: {triggers: []}\n---\napiVersion: ktrigger.dev/v1alpha1\nkind: TriggerService\nmetadata: {name: a}\nspec: {triggers: []}\n";
        let config = load_text("inline", text);
        assert_eq!(config.services.len(), 1);
        assert!(config.errors[0].contains("defined twice"), "{:?}", config.errors);
    }
}
