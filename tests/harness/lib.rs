//! Namespace cluster harness.
