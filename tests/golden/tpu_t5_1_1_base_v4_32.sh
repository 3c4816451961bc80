# ===== tpu/t5-base-v4-32.sh
#!/bin/bash
# pretrax sweep t5_base: slice t5-base-v4-32, v4-32 (on demand), 2 runs one after another.
# Written by `python -m launch.sweep --backend=tpu_vm`. Rerunning it resumes every run
# from the newest checkpoint in its workdir.
set -u -o pipefail
SWEEP_ROOT=/home/me/sweeps/NAME  # run states for `launch.sweep status`

# Create the slice unless it exists; delete it when this script ends (also on failure).
gcloud compute tpus tpu-vm describe t5-base-v4-32 --project=my-project --zone=us-central2-b >/dev/null 2>&1 \
    || gcloud compute tpus tpu-vm create t5-base-v4-32 --project=my-project --zone=us-central2-b \
    --accelerator-type=v4-32 --version=tpu-ubuntu2204-base \
    || exit 1
trap 'gcloud compute tpus tpu-vm delete t5-base-v4-32 --project=my-project --zone=us-central2-b --quiet' EXIT

# Install pretrax at the sweep's commit on every worker, in a Python 3.11 venv made by uv
# (the image's python3 may be older than jax needs), then set the workers up.
gcloud compute tpus tpu-vm ssh t5-base-v4-32 --project=my-project --zone=us-central2-b --worker=all \
    --command="set -e; [ -d ~/pretrax ] || git clone -q https://github.com/example/pretrax.git ~/pretrax; cd ~/pretrax; git fetch -q origin; git checkout -q 6d0d24e; [ -x ~/.local/bin/uv ] || { curl -LsSf https://astral.sh/uv/install.sh -o /tmp/uv-install.sh && UV_UNMANAGED_INSTALL=~/.local/bin sh /tmp/uv-install.sh; }; [ -x ~/pretrax-py3.11/bin/python ] || ~/.local/bin/uv venv -q --python 3.11 ~/pretrax-py3.11; ~/.local/bin/uv pip install -q --python ~/pretrax-py3.11/bin/python -e . 'jax[tpu]>=0.10,<0.13'" \
    || exit 1
gcloud compute tpus tpu-vm ssh t5-base-v4-32 --project=my-project --zone=us-central2-b --worker=all '--command=mountpoint -q /mnt/gcs || (sudo mkdir -p /mnt/gcs && sudo gcsfuse --uid=$(id -u) --gid=$(id -g) --rename-dir-limit=200000 --implicit-dirs -o allow_other my-pretrax-bucket /mnt/gcs)' \
    || exit 1

# Run lr=1.0.
rm -f "$SWEEP_ROOT"/lr=1.0/sweep/not_started
gcloud compute tpus tpu-vm ssh t5-base-v4-32 --project=my-project --zone=us-central2-b --worker=all \
    --command="cd ~/pretrax && PRETRAX_JOB_ID=t5_base/lr=1.0 TFDS_DATA_DIR=gs://my-pretrax-bucket/tensorflow_datasets ~/pretrax-py3.11/bin/python -m launch.train --config=configs/t5.py:t5_1_1_base --config.data.source=seqio --config.data.task=pretrax_c4_en_span_corruption --config.optimizer.learning_rate=1.0 --workdir=/mnt/gcs/sweeps/t5_base/lr=1.0"
echo $? > "$SWEEP_ROOT"/lr=1.0/sweep/exit_code

# Run lr=0.5.
rm -f "$SWEEP_ROOT"/lr=0.5/sweep/not_started
gcloud compute tpus tpu-vm ssh t5-base-v4-32 --project=my-project --zone=us-central2-b --worker=all \
    --command="cd ~/pretrax && PRETRAX_JOB_ID=t5_base/lr=0.5 TFDS_DATA_DIR=gs://my-pretrax-bucket/tensorflow_datasets ~/pretrax-py3.11/bin/python -m launch.train --config=configs/t5.py:t5_1_1_base --config.data.source=seqio --config.data.task=pretrax_c4_en_span_corruption --config.optimizer.learning_rate=0.5 --workdir=/mnt/gcs/sweeps/t5_base/lr=0.5"
echo $? > "$SWEEP_ROOT"/lr=0.5/sweep/exit_code
