//! The shim's typed errors, each mapping to one HTTP status and a JSON body that names the field.

use crate::admission::AdmissionReport;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The request is malformed or violates a rule about a single field (400).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The addressed object, or one a field refers to in a path, does not exist (404).
    #[error("{field}: {message}")]
    NotFound { field: String, message: String },
    /// The request is well formed but clashes with the inventory: duplicate id, still referenced (409).
    #[error("{field}: {message}")]
    Conflict { field: String, message: String },
    /// Admission control refused the write (409), with the verdict that explains why.
    #[error("{field}: admission control: {message}")]
    Admission {
        field: String,
        message: String,
        report: Box<AdmissionReport>,
    },
    /// The config generation cannot grow: agents only apply a generation above the one they hold.
    #[error(
        "config generation {0} is the largest there is; agents would ignore any newer configuration"
    )]
    GenerationExhausted(u64),
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The database's schema could not be brought to this version's (or is a newer shim's).
    #[error("database schema: {0}")]
    Schema(#[from] rusqlite_migration::Error),
    /// A row in the database does not decode: written by another version or edited by hand.
    #[error("database holds an unreadable {what}: {message}")]
    Corrupt { what: String, message: String },
}

impl ShimError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
    pub fn not_found(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::NotFound {
            field: field.into(),
            message: message.into(),
        }
    }
    pub fn conflict(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Conflict {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The HTTP status this error is reported with.
    pub fn status(&self) -> u16 {
        match self {
            Self::Invalid { .. } => 400,
            Self::NotFound { .. } => 404,
            Self::Conflict { .. } | Self::Admission { .. } => 409,
            Self::Db(_) | Self::Schema(_) | Self::Corrupt { .. } | Self::GenerationExhausted(_) => {
                500
            }
        }
    }

    pub fn body(&self) -> ErrorBody {
        let (code, field, message, admission) = match self {
            Self::Invalid { field, message } => ("invalid", Some(field), message.clone(), None),
            Self::NotFound { field, message } => ("not_found", Some(field), message.clone(), None),
            Self::Conflict { field, message } => ("conflict", Some(field), message.clone(), None),
            Self::Admission {
                field,
                message,
                report,
            } => (
                "admission",
                Some(field),
                message.clone(),
                Some((**report).clone()),
            ),
            Self::Db(e) => ("internal", None, format!("database: {e}"), None),
            Self::Schema(_) | Self::Corrupt { .. } | Self::GenerationExhausted(_) => {
                ("internal", None, self.to_string(), None)
            }
        };
        ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                field: field.cloned(),
                message,
            },
            admission,
        }
    }
}

/// The body of every error answer, also of the 401 the token check gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admission: Option<AdmissionReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}
