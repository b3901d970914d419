//! The one-writer, many-reader broadcast ring (in progress).
