#!/bin/sh
echo "preparing dataset $DATASET on $SKYFORM_CLUSTER"
echo "rows=1000" > data.txt
echo "done"
