//! Why a SAMS call did not produce an answer.

/// A failed exchange with SAMS. None of these says anything about the token being checked:
/// they mean the gateway could not find out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SamsError {
    /// SAMS could not be reached or did not answer in time.
    #[error("SAMS request to {endpoint} failed: {message}")]
    Transport {
        /// The path called.
        endpoint: &'static str,
        /// The transport error.
        message: String,
    },
    /// SAMS answered with an error status.
    #[error("SAMS request to {endpoint} returned HTTP {status}: {body}")]
    Status {
        /// The path called.
        endpoint: &'static str,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// SAMS answered with something that is not the expected JSON.
    #[error("SAMS request to {endpoint} returned an invalid response: {message}")]
    InvalidResponse {
        /// The path called.
        endpoint: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The configured SAMS URL cannot be used.
    #[error("invalid SAMS URL {url:?}: {message}")]
    InvalidUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The caller stopped waiting for the answer.
    #[error("request canceled")]
    Canceled,
    /// Too many introspections were in progress for this one to start in time.
    #[error("too many token checks in progress ({limit}); none finished within {waited:?}")]
    Overloaded {
        /// The bound on introspections in progress.
        limit: usize,
        /// How long the check waited for a free slot.
        waited: std::time::Duration,
    },
}

impl SamsError {
    /// Whether the caller gave up, as opposed to SAMS failing.
    pub fn is_canceled(&self) -> bool {
        matches!(self, SamsError::Canceled)
    }

    /// Whether the check was not attempted because too many were in progress.
    pub fn is_overloaded(&self) -> bool {
        matches!(self, SamsError::Overloaded { .. })
    }
}

/// At most this much of an error body is kept.
const BODY_SNIPPET: usize = 256;

/// The first [`BODY_SNIPPET`] bytes of `body`, cut on a character boundary.
fn snippet(body: &str) -> String {
    let mut end = body.len().min(BODY_SNIPPET);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    body[..end].to_string()
}

/// Reads a SAMS response: a non-2xx status is [`SamsError::Status`] (with a snippet of the
/// body), a body that does not parse as `T` is [`SamsError::InvalidResponse`].
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    endpoint: &'static str,
) -> Result<T, SamsError> {
    let status = response.status();
    let body = response.text().await.map_err(|err| SamsError::Transport {
        endpoint,
        message: err.to_string(),
    })?;
    if !status.is_success() {
        return Err(SamsError::Status {
            endpoint,
            status: status.as_u16(),
            body: snippet(&body),
        });
    }
    serde_json::from_str(&body).map_err(|err| SamsError::InvalidResponse {
        endpoint,
        message: err.to_string(),
    })
}
