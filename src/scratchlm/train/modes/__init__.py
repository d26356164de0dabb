"""Training modes: what differs between pretraining and each finetuning method (data, loss, trainable
parameters, checkpoint layout). The protocol is `base.Mode`; the loop is `scratchlm.train.loop`."""
