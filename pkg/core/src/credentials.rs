//! What `{env: NAME}` and `{file: PATH}` credential references may read from this process.
//!
//! `ktrigger run` belongs to the user who starts it: any variable or file it can read may be
//! named. `ktrigger controller` serves every namespace, and its own environment and files (its
//! ServiceAccount token above all) are not the tenants' to use: there a reference is refused
//! unless the operator allowed its directory (`--allow-credential-files`) or variable prefix
//! (`--allow-credential-env`). A refusal reads the same whether a path is missing, unreadable or
//! outside the allowed directories, so that a tenant learns nothing of the controller's files.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What stands in for a Secret's value when nothing may be read (`ktrigger validate`): shaped so
/// that format checks of URLs, tokens and header values pass. Nothing is ever sent with it.
pub(crate) const UNCHECKED_VALUE: &str = "https://secret-not-read.invalid/";

/// Largest credential file read, the size limit of a Kubernetes Secret.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Debug)]
enum Rules {
    Unrestricted,
    Restricted {
        dirs: Vec<PathBuf>,
        env_prefixes: Vec<String>,
    },
    /// Checking offline: what cannot be read is noted here, and a stand-in is used.
    Offline {
        unread: Mutex<BTreeSet<String>>,
    },
}

/// Which process files and environment variables credential references may read. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CredentialPolicy(Arc<Rules>);

impl Default for CredentialPolicy {
    /// [`unrestricted`](Self::unrestricted): the process belongs to whoever wrote the triggers.
    fn default() -> Self {
        CredentialPolicy::unrestricted()
    }
}

impl CredentialPolicy {
    /// Every file and variable the process can read may be named (`ktrigger run`).
    pub fn unrestricted() -> Self {
        CredentialPolicy(Arc::new(Rules::Unrestricted))
    }

    /// For checking files offline (`ktrigger validate`): what can be read is read and checked
    /// like under [`unrestricted`](Self::unrestricted); an unset variable or an unreadable file
    /// is noted (see [`unread`](Self::unread)) and a stand-in shaped to pass format checks is
    /// used instead, so that the rest of the trigger is still checked.
    pub fn offline() -> Self {
        CredentialPolicy(Arc::new(Rules::Offline { unread: Mutex::new(BTreeSet::new()) }))
    }

    /// The variables and files an [`offline`](Self::offline) policy could not read so far, as
    /// `environment variable NAME` or `file PATH`.
    pub fn unread(&self) -> Vec<String> {
        match &*self.0 {
            Rules::Offline { unread } => crate::sync::lock(unread).iter().cloned().collect(),
            _ => Vec::new(),
        }
    }

    fn stand_in(unread: &Mutex<BTreeSet<String>>, what: String) -> String {
        crate::sync::lock(unread).insert(what);
        UNCHECKED_VALUE.to_string()
    }

    /// Only files under `dirs` and variables whose name starts with one of `env_prefixes`
    /// (`ktrigger controller`). Directories are canonicalised now, so that a path is compared
    /// with where they really are; an error names the flag and value at fault.
    pub fn restricted(dirs: &[PathBuf], env_prefixes: &[String]) -> Result<Self, String> {
        let dirs = dirs
            .iter()
            .map(|dir| match std::fs::canonicalize(dir) {
                Ok(canonical) if canonical.is_dir() => Ok(canonical),
                Ok(_) => Err(format!("--allow-credential-files {}: not a directory", dir.display())),
                Err(e) => Err(format!("--allow-credential-files {}: {e}", dir.display())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if env_prefixes.iter().any(String::is_empty) {
            return Err("--allow-credential-env: a prefix cannot be empty".into());
        }
        Ok(CredentialPolicy(Arc::new(Rules::Restricted { dirs, env_prefixes: env_prefixes.to_vec() })))
    }

    /// The value of environment variable `name`, or why it cannot be used.
    pub fn read_env(&self, name: &str) -> Result<String, String> {
        match &*self.0 {
            Rules::Unrestricted => std::env::var(name).map_err(|_| format!("environment variable {name} is not set")),
            Rules::Offline { unread } => {
                Ok(std::env::var(name)
                    .unwrap_or_else(|_| Self::stand_in(unread, format!("environment variable {name}"))))
            }
            Rules::Restricted { env_prefixes, .. } => env_prefixes
                .iter()
                .any(|prefix| name.starts_with(prefix.as_str()))
                .then(|| std::env::var(name).ok())
                .flatten()
                .ok_or_else(|| {
                    format!(
                        "environment variable {name} is not set or not allowed: the controller reads only \
                         variables it was started with --allow-credential-env for"
                    )
                }),
        }
    }

    /// The content of file `path` (at most [`MAX_FILE_BYTES`]), or why it cannot be used.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, String> {
        match &*self.0 {
            Rules::Unrestricted => read_bounded(Path::new(path)).map_err(|e| format!("cannot read {path}: {e}")),
            Rules::Offline { unread } => Ok(read_bounded(Path::new(path))
                .unwrap_or_else(|_| Self::stand_in(unread, format!("file {path}")).into_bytes())),
            Rules::Restricted { dirs, .. } => {
                let refused = || {
                    format!(
                        "file {path} cannot be read: it is missing, unreadable or outside the directories \
                         the controller was started with --allow-credential-files for"
                    )
                };
                // Canonical: no `..` and no symlink left that could lead out of an allowed directory.
                let canonical = std::fs::canonicalize(path).map_err(|_| refused())?;
                if !dirs.iter().any(|dir| canonical.starts_with(dir)) {
                    return Err(refused());
                }
                // Checked before opening: opening a FIFO would wait for a writer.
                if !std::fs::metadata(&canonical).is_ok_and(|m| m.is_file()) {
                    return Err(refused());
                }
                read_bounded(&canonical).map_err(|_| refused())
            }
        }
    }
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut content = Vec::new();
    File::open(path)?.take(MAX_FILE_BYTES + 1).read_to_end(&mut content)?;
    if content.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(dirs: &[&Path], prefixes: &[&str]) -> CredentialPolicy {
        let dirs: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
        let prefixes: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
        CredentialPolicy::restricted(&dirs, &prefixes).unwrap()
    }

    #[test]
    fn offline_reads_what_it_can_and_notes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "t0ken").unwrap();
        let missing = dir.path().join("missing").display().to_string();
        let policy = CredentialPolicy::offline();

        assert_eq!(policy.read_file(&dir.path().join("token").display().to_string()).unwrap(), b"t0ken");
        assert_eq!(policy.read_env("PATH").unwrap(), std::env::var("PATH").unwrap());
        assert_eq!(policy.read_file(&missing).unwrap(), UNCHECKED_VALUE.as_bytes());
        assert_eq!(policy.read_env("KTRIGGER_TEST_UNSET_VAR").unwrap(), UNCHECKED_VALUE);
        assert_eq!(
            policy.unread(),
            ["environment variable KTRIGGER_TEST_UNSET_VAR".to_string(), format!("file {missing}")]
        );
    }

    #[test]
    fn restricted_reads_only_files_under_allowed_directories() {
        let root = tempfile::tempdir().unwrap();
        let allowed = root.path().join("allowed");
        std::fs::create_dir(&allowed).unwrap();
        std::fs::write(allowed.join("token"), "t0ken").unwrap();
        std::fs::write(root.path().join("outside"), "private").unwrap();
        let policy = policy(&[&allowed], &[]);

        assert_eq!(policy.read_file(&allowed.join("token").display().to_string()).unwrap(), b"t0ken");
        let outside = root.path().join("outside").display().to_string();
        assert!(policy.read_file(&outside).unwrap_err().contains("outside the directories"));
    }

    #[test]
    fn dot_dot_and_symlinks_cannot_lead_out_of_an_allowed_directory() {
        let root = tempfile::tempdir().unwrap();
        let allowed = root.path().join("allowed");
        std::fs::create_dir(&allowed).unwrap();
        std::fs::write(root.path().join("outside"), "private").unwrap();
        std::os::unix::fs::symlink(root.path().join("outside"), allowed.join("link")).unwrap();
        let policy = policy(&[&allowed], &[]);

        for path in [allowed.join("../outside"), allowed.join("link")] {
            let err = policy.read_file(&path.display().to_string()).unwrap_err();
            assert!(err.contains("outside the directories"), "{}: {err}", path.display());
        }
    }

    #[test]
    fn a_prefix_of_a_directory_name_is_not_that_directory() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("secrets")).unwrap();
        std::fs::create_dir(root.path().join("secrets-other")).unwrap();
        std::fs::write(root.path().join("secrets-other/token"), "x").unwrap();
        let policy = policy(&[&root.path().join("secrets")], &[]);
        assert!(policy.read_file(&root.path().join("secrets-other/token").display().to_string()).is_err());
    }

    #[test]
    fn missing_unreadable_and_disallowed_files_read_the_same() {
        let root = tempfile::tempdir().unwrap();
        let allowed = root.path().join("allowed");
        std::fs::create_dir(&allowed).unwrap();
        std::fs::create_dir(allowed.join("a-directory")).unwrap();
        std::fs::write(root.path().join("exists"), "x").unwrap();
        let policy = policy(&[&allowed], &[]);
        let message = |path: &Path| {
            let path = path.display().to_string();
            policy.read_file(&path).unwrap_err().replace(&path, "PATH")
        };
        let missing_inside = message(&allowed.join("missing"));
        assert_eq!(message(&root.path().join("exists")), missing_inside);
        assert_eq!(message(&root.path().join("missing")), missing_inside);
        assert_eq!(message(&allowed.join("a-directory")), missing_inside);
    }

    #[test]
    fn restricted_reads_only_variables_with_an_allowed_prefix() {
        assert_eq!(policy(&[], &["PAT"]).read_env("PATH").unwrap(), std::env::var("PATH").unwrap());
        let policy = policy(&[], &["KTRIGGER_TEST_CRED_"]);
        let set = policy.read_env("PATH").unwrap_err();
        let unset = policy.read_env("KTRIGGER_TEST_CRED_UNSET").unwrap_err();
        assert_eq!(set.replace("PATH", "NAME"), unset.replace("KTRIGGER_TEST_CRED_UNSET", "NAME"));
        assert!(set.contains("--allow-credential-env"), "{set}");
    }

    #[test]
    fn unrestricted_reads_anything_and_says_why_it_could_not() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("token"), "t").unwrap();
        let policy = CredentialPolicy::default();
        assert_eq!(policy.read_file(&root.path().join("token").display().to_string()).unwrap(), b"t");
        let err = policy.read_file(&root.path().join("missing").display().to_string()).unwrap_err();
        assert!(err.contains("No such file"), "{err}");
    }

    #[test]
    fn files_larger_than_a_secret_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let big = root.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_FILE_BYTES as usize + 1]).unwrap();
        let err = CredentialPolicy::default().read_file(&big.display().to_string()).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
    }

    #[test]
    fn operator_mistakes_name_the_flag() {
        let err = CredentialPolicy::restricted(&[PathBuf::from("/nonexistent/ktrigger")], &[]).unwrap_err();
        assert!(err.starts_with("--allow-credential-files /nonexistent/ktrigger:"), "{err}");
        let err = CredentialPolicy::restricted(&[], &[String::new()]).unwrap_err();
        assert!(err.starts_with("--allow-credential-env:"), "{err}");
    }
}
