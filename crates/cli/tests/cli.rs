//! End-to-end tests of the hotsplice binary.
