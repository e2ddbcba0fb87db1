//! fl-core's one integration-test binary; each module is one area.

mod golden;
mod model;
mod round;
mod train;
