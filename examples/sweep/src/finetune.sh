#!/bin/sh
echo "fine-tuning with learning rate $1 on $SKYFORM_CLUSTER"
echo "final loss for lr=$LEARNING_RATE: 0.42"
