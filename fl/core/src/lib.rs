//! Sans-IO federated-learning core: tensors and models, Flower-exact strategies as a fold,
//! the round state machine and local trainers. No IO, no clock, no global RNG: time and
//! seeds are arguments.

pub mod data;
pub mod error;
pub mod job;
pub mod model;
pub mod round;
pub mod safetensors;
pub mod strategy;
pub mod train;

pub use error::FlError;
pub use model::{DType, Digest, Model, ModelView, Tensor, TensorView};
pub use strategy::{Metrics, Strategy, Update};
