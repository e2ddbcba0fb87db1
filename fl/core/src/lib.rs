//! Sans-IO federated-learning core.
