//! Lab support for integration tests.
