//! Local trainer and dataset tests.
