//! fl-core's one integration-test binary; each module is one area.

mod round;
mod train;
