//! Firecracker driver (to be written).
