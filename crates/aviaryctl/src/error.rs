//! The driver's error type. Every fallible operation in the crate returns [`Error`]; `main`
//! alone converts it to `anyhow` for printing.

use std::fmt;

/// One problem in a rollout spec, located by its field path (e.g.
/// `spec.analysis.stepWeights[2]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecError {
    /// Dotted path of the offending field, as written in the YAML.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl SpecError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A list of spec errors, displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong in the driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rollout spec is not valid; every problem found is listed with its field path.
    #[error("invalid rollout spec ({} problem{}):\n{errors}", errors.0.len(), if errors.0.len() == 1 { "" } else { "s" })]
    Spec { errors: SpecErrors },
    /// The plugin configuration was rejected by the plugin's own validation.
    #[error("invalid plugin config: {0}")]
    Config(#[from] aviary_contract::config::ConfigError),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A metrics source (Envoy admin or Prometheus) could not be read or parsed.
    #[error("metrics source {source_name}: {message}")]
    Source {
        source_name: String,
        message: String,
    },
    /// Writing the plugin config to its sink failed.
    #[error("config sink {sink}: {message}")]
    Sink { sink: String, message: String },
    /// A webhook failed after its retries, or answered with something unexpected.
    #[error("webhook {name}: {message}")]
    Webhook { name: String, message: String },
    /// The persisted rollout state is missing, unreadable or inconsistent.
    #[error("rollout state {path}: {message}")]
    State { path: String, message: String },
    /// An operation is not allowed in the rollout's current phase.
    #[error("{0}")]
    Invalid(String),
    /// JSON (de)serialisation failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// YAML (de)serialisation failed.
    #[error("yaml: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }

    /// A spec error with a single problem.
    pub fn spec(path: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Spec {
            errors: SpecErrors(vec![SpecError::new(path, message)]),
        }
    }
}

impl From<Vec<SpecError>> for Error {
    fn from(errors: Vec<SpecError>) -> Self {
        Error::Spec {
            errors: SpecErrors(errors),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
