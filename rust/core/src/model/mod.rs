//! The model: config, checkpoint, weights, forward pass.
