//! Sans-IO federated-learning core: tensors and models, Flower-exact strategies as a fold,
//! the round state machine and local trainers. No IO, no clock, no global RNG: time and
//! seeds are arguments.

pub mod data;
pub mod round;
pub mod train;
