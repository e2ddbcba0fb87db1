//! Round state machine tests.
