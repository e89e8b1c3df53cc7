//! Failure classes and exit statuses: the one mapping from a class of failure to its exit
//! status and to its word in JSON error objects and the audit log.

use serde::Serialize;

/// Exit status: the change can be applied (or the command succeeded).
pub const EXIT_OK: u8 = 0;
/// Exit status: refused — the change cannot be applied safely; the report says why.
pub const EXIT_REFUSED: u8 = ErrorClass::Refused.exit_code();
/// Exit status: bad input — unreadable file, not ELF, wrong architecture, bad arguments.
pub const EXIT_BAD_INPUT: u8 = ErrorClass::BadInput.exit_code();
/// Exit status: environment — a failing build, permissions, a process gone, I/O errors.
pub const EXIT_ENVIRONMENT: u8 = ErrorClass::Environment.exit_code();

/// What kind of failure ended a command (or one process of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ErrorClass {
    /// Refused for safety, or the code does not match; the target is untouched (exit 1).
    Refused,
    /// Bad input: unreadable or malformed files, bad arguments, no such patch (exit 2).
    BadInput,
    /// The environment: permissions, a process gone, a failed build, I/O errors (exit 3).
    Environment,
    /// hotsplice was asked to stop (SIGINT, SIGTERM, ...) and rolled back (exit 3).
    Interrupted,
}

impl ErrorClass {
    /// The exit status of the class.
    pub const fn exit_code(self) -> u8 {
        match self {
            ErrorClass::Refused => 1,
            ErrorClass::BadInput => 2,
            ErrorClass::Environment | ErrorClass::Interrupted => 3,
        }
    }

    /// Its word in JSON error objects and the audit log (as serialized).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Refused => "refused",
            ErrorClass::BadInput => "bad-input",
            ErrorClass::Environment => "environment",
            ErrorClass::Interrupted => "interrupted",
        }
    }
}

impl From<hotsplice_apply::ErrorClass> for ErrorClass {
    fn from(class: hotsplice_apply::ErrorClass) -> Self {
        match class {
            hotsplice_apply::ErrorClass::Refused => ErrorClass::Refused,
            hotsplice_apply::ErrorClass::BadInput => ErrorClass::BadInput,
            hotsplice_apply::ErrorClass::Environment => ErrorClass::Environment,
            hotsplice_apply::ErrorClass::Interrupted => ErrorClass::Interrupted,
        }
    }
}

/// The class of a live-patching engine error.
pub fn class_of(error: &hotsplice_apply::Error) -> ErrorClass {
    error.class().into()
}

/// An error carrying the class (and so the exit status) it should produce.
#[derive(Debug)]
pub struct Exit {
    /// The class of failure.
    pub class: ErrorClass,
    /// What went wrong.
    pub error: anyhow::Error,
}

impl Exit {
    /// Refused (exit status 1).
    pub fn refused(error: anyhow::Error) -> Self {
        Exit {
            class: ErrorClass::Refused,
            error,
        }
    }

    /// Bad input (exit status 2).
    pub fn bad_input(error: anyhow::Error) -> Self {
        Exit {
            class: ErrorClass::BadInput,
            error,
        }
    }

    /// The environment (exit status 3).
    pub fn environment(error: anyhow::Error) -> Self {
        Exit {
            class: ErrorClass::Environment,
            error,
        }
    }

    /// Its exit status.
    pub fn code(&self) -> u8 {
        self.class.exit_code()
    }
}

/// An error whose JSON object a command already printed (with `--json`).
#[derive(Debug)]
pub struct Reported(pub anyhow::Error);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Reported {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word is the serialized form, and the documented exit statuses hold.
    #[test]
    fn one_mapping() {
        for (class, code) in [
            (ErrorClass::Refused, 1),
            (ErrorClass::BadInput, 2),
            (ErrorClass::Environment, 3),
            (ErrorClass::Interrupted, 3),
        ] {
            assert_eq!(class.exit_code(), code);
            assert_eq!(
                serde_json::to_value(class).unwrap(),
                serde_json::json!(class.as_str())
            );
            let from_engine = match class {
                ErrorClass::Refused => hotsplice_apply::ErrorClass::Refused,
                ErrorClass::BadInput => hotsplice_apply::ErrorClass::BadInput,
                ErrorClass::Environment => hotsplice_apply::ErrorClass::Environment,
                ErrorClass::Interrupted => hotsplice_apply::ErrorClass::Interrupted,
            };
            assert_eq!(ErrorClass::from(from_engine), class);
            assert_eq!(from_engine.as_str(), class.as_str());
        }
    }
}
