//! The driver's errors. [`Error`] is the crate's error type: every fallible operation with
//! effects returns it, and `main` alone converts it to `anyhow` for printing. The pure parts
//! (durations, counter windows, Prometheus text and samples) return the narrower types below,
//! each of which converts into [`Error`].

use std::fmt;

use aviary_contract::config::ConfigError;

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

    /// A plugin config error found at `at` (the path of the plugin config in the spec),
    /// located at the field the plugin's reader names.
    pub fn plugin(at: &str, e: ConfigError) -> Self {
        let path = match (at, e.field.is_empty()) {
            (_, true) => at.to_string(),
            ("", false) => e.field,
            (_, false) => format!("{at}.{}", e.field),
        };
        SpecError {
            path,
            message: e.message,
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
    Config(#[from] ConfigError),
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
    /// A queued operator command could not be read (the file is removed).
    #[error("bad command file {path}: {message}")]
    Command { path: String, message: String },
    /// A spec duration could not be read.
    #[error(transparent)]
    Duration(#[from] DurationError),
    /// An operation is not allowed in the rollout's current phase.
    #[error("{0}")]
    Invalid(String),
    /// A command could not be carried out as asked: a bad argument, no rollout state where it
    /// looks, or no answer from the running driver.
    #[error("{0}")]
    Usage(String),
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

/// A duration that is not one (see [`HumanDuration`](crate::core::spec::HumanDuration)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a duration; write e.g. 500ms, 30s, 1m, 1m30s or 2h")]
pub struct DurationError {
    /// The text as written.
    pub text: String,
}

/// Why two snapshots do not make a window: a cumulative counter went backwards or vanished,
/// because Envoy restarted, its stats were reset, or the source missed a proxy.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CounterReset {
    /// A counter is lower than before.
    #[error("{counter} went down from {from} to {to} (counter reset)")]
    WentDown {
        /// The counter, e.g. `requests` or `responses{5xx}`.
        counter: String,
        from: u64,
        to: u64,
    },
    /// A counter present before is absent now.
    #[error("{counter} disappeared (counter reset)")]
    Disappeared {
        /// The counter, e.g. `responses{5xx}` or `latency bucket 5`.
        counter: String,
    },
    /// A version that had traffic is no longer in the snapshot.
    #[error("no longer reported (counter reset or source gap)")]
    NoLongerReported,
    /// The same, naming the version.
    #[error("`{version}` is no longer reported (counter reset or source gap)")]
    VersionGone { version: String },
    /// Some counter of the version went down (fewer response classes, or fewer requests).
    #[error("`{version}` counters went down (counter reset)")]
    VersionWentDown { version: String },
    /// A reset in the baseline's or the canary's counters.
    #[error("{role} `{version}`: {reset}")]
    In {
        /// `baseline` or `canary`.
        role: &'static str,
        version: String,
        reset: Box<CounterReset>,
    },
}

impl CounterReset {
    /// This reset, as found in the counters of the `role` (baseline or canary) `version`.
    pub fn within(self, role: &'static str, version: &str) -> CounterReset {
        CounterReset::In {
            role,
            version: version.to_string(),
            reset: Box::new(self),
        }
    }
}

/// A syntax error in the Prometheus text format, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {error}")]
pub struct ParseError {
    pub line: usize,
    pub error: SyntaxError,
}

/// What is wrong with one line of Prometheus text. Fields hold the text around the problem
/// (at most 60 characters) or the label concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    /// The line does not start with a metric name.
    #[error("expected a metric name at {0:?}")]
    MetricName(String),
    /// A label name is missing or invalid.
    #[error("expected a label name at {0:?}")]
    LabelName(String),
    /// A label name is not followed by `=`.
    #[error("expected '=' after label {0}")]
    Equals(String),
    /// A label value does not start with a double quote.
    #[error("expected '\"' to open the value of label {0}")]
    OpenQuote(String),
    /// A label value has no closing double quote.
    #[error("unterminated value of label {0}")]
    Unterminated(String),
    /// A label value has an escape other than `\\`, `\"` or `\n`.
    #[error("bad escape \\{escape} in label {label}")]
    Escape { escape: char, label: String },
    /// A label appears twice.
    #[error("duplicate label {0}")]
    DuplicateLabel(String),
    /// A label value is followed by neither `,` nor `}`.
    #[error("expected ',' or '}}' after label {0}")]
    Separator(String),
    /// The sample has no value.
    #[error("metric {0} has no value")]
    NoValue(String),
    /// The value is not a number.
    #[error("bad value {0:?}")]
    Value(String),
    /// The timestamp is not an integer.
    #[error("bad timestamp {0:?}")]
    Timestamp(String),
    /// Something follows the timestamp.
    #[error("unexpected {0:?} after the value")]
    Trailing(String),
}

/// An Aviary sample that cannot be added to a snapshot.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SampleError {
    /// A series lacks a label its metric must have (`class`, `le`, `bin`, `reason`).
    #[error("{metric} without a {label} label")]
    MissingLabel { metric: String, label: &'static str },
    /// A counter of a version is NaN.
    #[error("{metric}{{version={version:?}}} is NaN")]
    NaN { metric: String, version: String },
    /// A counter or gauge is negative or infinite.
    #[error("{metric} has invalid value {value}")]
    InvalidValue { metric: String, value: f64 },
    /// A histogram bound (`le` or `bin`) is not a number.
    #[error("{metric} has a bad bound {bound:?}")]
    BadBound { metric: String, bound: String },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
