//! The library's error type.

/// Errors the library reports. Each names the file (and where known the field) it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file the error is about.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Anything else, already phrased for the user.
    #[error("{0}")]
    Msg(String),
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
