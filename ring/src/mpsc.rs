//! The multi-producer/single-consumer byte ring (in progress).
