# ===== tpu/pretrax-t5-small-v5e-0.sh
#!/bin/bash
# pretrax sweep t5_small_v5e: slice pretrax-t5-small-v5e-0, v5litepod-16 (queued spot), run seed=0.
# Written by `python -m launch.sweep --backend=tpu_vm`. Rerunning it resumes every run
# from the newest checkpoint in its workdir.
set -u -o pipefail
SWEEP_ROOT=/home/me/sweeps/NAME  # run states for `launch.sweep status`

# Queue for the slice unless it is queued already; delete it when this script ends (also
# on failure); wait until it is ACTIVE.
gcloud compute tpus queued-resources describe pretrax-t5-small-v5e-0 --project=my-project --zone=us-west4-a >/dev/null 2>&1 \
    || gcloud compute tpus queued-resources create pretrax-t5-small-v5e-0 --node-id=pretrax-t5-small-v5e-0 --project=my-project --zone=us-west4-a \
    --accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite --spot \
    || exit 1
trap 'gcloud compute tpus queued-resources delete pretrax-t5-small-v5e-0 --project=my-project --zone=us-west4-a --force --quiet' EXIT
while true; do
  state=$(gcloud compute tpus queued-resources describe pretrax-t5-small-v5e-0 --project=my-project --zone=us-west4-a '--format=value(state.state)')
  case "$state" in
    ACTIVE) break ;;
    FAILED|SUSPENDED) echo "queued resource pretrax-t5-small-v5e-0 is $state" >&2; exit 1 ;;
  esac
  sleep 60
done

# Install pretrax at the sweep's commit on every worker, in a Python 3.11 venv made by uv
# (the image's python3 may be older than jax needs), then set the workers up.
gcloud compute tpus tpu-vm ssh pretrax-t5-small-v5e-0 --project=my-project --zone=us-west4-a --worker=all \
    --command="set -e; [ -d ~/pretrax ] || git clone -q https://github.com/example/pretrax.git ~/pretrax; cd ~/pretrax; git fetch -q origin; git checkout -q 6d0d24e; [ -x ~/.local/bin/uv ] || { curl -LsSf https://astral.sh/uv/install.sh -o /tmp/uv-install.sh && UV_UNMANAGED_INSTALL=~/.local/bin sh /tmp/uv-install.sh; }; [ -x ~/pretrax-py3.11/bin/python ] || ~/.local/bin/uv venv -q --python 3.11 ~/pretrax-py3.11; ~/.local/bin/uv pip install -q --python ~/pretrax-py3.11/bin/python -e . 'jax[tpu]>=0.10,<0.13'" \
    || exit 1
gcloud compute tpus tpu-vm ssh pretrax-t5-small-v5e-0 --project=my-project --zone=us-west4-a --worker=all '--command=mountpoint -q /mnt/gcs || (sudo mkdir -p /mnt/gcs && sudo gcsfuse --uid=$(id -u) --gid=$(id -g) --rename-dir-limit=200000 --implicit-dirs -o allow_other my-pretrax-bucket /mnt/gcs)' \
    || exit 1

# Run seed=0.
rm -f "$SWEEP_ROOT"/seed=0/sweep/not_started
gcloud compute tpus tpu-vm ssh pretrax-t5-small-v5e-0 --project=my-project --zone=us-west4-a --worker=all \
    --command="cd ~/pretrax && PRETRAX_JOB_ID=t5_small_v5e/seed=0 TFDS_DATA_DIR=gs://my-pretrax-bucket/tensorflow_datasets ~/pretrax-py3.11/bin/python -m launch.train --config=configs/t5.py:t5_1_1_small --config.data.source=seqio --config.data.task=pretrax_c4_en_span_corruption --config.checkpoint.every=1000 --config.seed=0 --workdir=/mnt/gcs/sweeps/t5_small_v5e/seed=0"
echo $? > "$SWEEP_ROOT"/seed=0/sweep/exit_code
# ===== tpu/pretrax-t5-small-v5e-1.sh
#!/bin/bash
# pretrax sweep t5_small_v5e: slice pretrax-t5-small-v5e-1, v5litepod-16 (queued spot), run seed=1.
# Written by `python -m launch.sweep --backend=tpu_vm`. Rerunning it resumes every run
# from the newest checkpoint in its workdir.
set -u -o pipefail
SWEEP_ROOT=/home/me/sweeps/NAME  # run states for `launch.sweep status`

# Queue for the slice unless it is queued already; delete it when this script ends (also
# on failure); wait until it is ACTIVE.
gcloud compute tpus queued-resources describe pretrax-t5-small-v5e-1 --project=my-project --zone=us-west4-a >/dev/null 2>&1 \
    || gcloud compute tpus queued-resources create pretrax-t5-small-v5e-1 --node-id=pretrax-t5-small-v5e-1 --project=my-project --zone=us-west4-a \
    --accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite --spot \
    || exit 1
trap 'gcloud compute tpus queued-resources delete pretrax-t5-small-v5e-1 --project=my-project --zone=us-west4-a --force --quiet' EXIT
while true; do
  state=$(gcloud compute tpus queued-resources describe pretrax-t5-small-v5e-1 --project=my-project --zone=us-west4-a '--format=value(state.state)')
  case "$state" in
    ACTIVE) break ;;
    FAILED|SUSPENDED) echo "queued resource pretrax-t5-small-v5e-1 is $state" >&2; exit 1 ;;
  esac
  sleep 60
done

# Install pretrax at the sweep's commit on every worker, in a Python 3.11 venv made by uv
# (the image's python3 may be older than jax needs), then set the workers up.
gcloud compute tpus tpu-vm ssh pretrax-t5-small-v5e-1 --project=my-project --zone=us-west4-a --worker=all \
    --command="set -e; [ -d ~/pretrax ] || git clone -q https://github.com/example/pretrax.git ~/pretrax; cd ~/pretrax; git fetch -q origin; git checkout -q 6d0d24e; [ -x ~/.local/bin/uv ] || { curl -LsSf https://astral.sh/uv/install.sh -o /tmp/uv-install.sh && UV_UNMANAGED_INSTALL=~/.local/bin sh /tmp/uv-install.sh; }; [ -x ~/pretrax-py3.11/bin/python ] || ~/.local/bin/uv venv -q --python 3.11 ~/pretrax-py3.11; ~/.local/bin/uv pip install -q --python ~/pretrax-py3.11/bin/python -e . 'jax[tpu]>=0.10,<0.13'" \
    || exit 1
gcloud compute tpus tpu-vm ssh pretrax-t5-small-v5e-1 --project=my-project --zone=us-west4-a --worker=all '--command=mountpoint -q /mnt/gcs || (sudo mkdir -p /mnt/gcs && sudo gcsfuse --uid=$(id -u) --gid=$(id -g) --rename-dir-limit=200000 --implicit-dirs -o allow_other my-pretrax-bucket /mnt/gcs)' \
    || exit 1

# Run seed=1.
rm -f "$SWEEP_ROOT"/seed=1/sweep/not_started
gcloud compute tpus tpu-vm ssh pretrax-t5-small-v5e-1 --project=my-project --zone=us-west4-a --worker=all \
    --command="cd ~/pretrax && PRETRAX_JOB_ID=t5_small_v5e/seed=1 TFDS_DATA_DIR=gs://my-pretrax-bucket/tensorflow_datasets ~/pretrax-py3.11/bin/python -m launch.train --config=configs/t5.py:t5_1_1_small --config.data.source=seqio --config.data.task=pretrax_c4_en_span_corruption --config.checkpoint.every=1000 --config.seed=1 --workdir=/mnt/gcs/sweeps/t5_small_v5e/seed=1"
echo $? > "$SWEEP_ROOT"/seed=1/sweep/exit_code
# ===== tpu/pretrax-t5-small-v5e-2.sh
#!/bin/bash
# pretrax sweep t5_small_v5e: slice pretrax-t5-small-v5e-2, v5litepod-16 (queued spot), run seed=2.
# Written by `python -m launch.sweep --backend=tpu_vm`. Rerunning it resumes every run
# from the newest checkpoint in its workdir.
set -u -o pipefail
SWEEP_ROOT=/home/me/sweeps/NAME  # run states for `launch.sweep status`

# Queue for the slice unless it is queued already; delete it when this script ends (also
# on failure); wait until it is ACTIVE.
gcloud compute tpus queued-resources describe pretrax-t5-small-v5e-2 --project=my-project --zone=us-west4-a >/dev/null 2>&1 \
    || gcloud compute tpus queued-resources create pretrax-t5-small-v5e-2 --node-id=pretrax-t5-small-v5e-2 --project=my-project --zone=us-west4-a \
    --accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite --spot \
    || exit 1
trap 'gcloud compute tpus queued-resources delete pretrax-t5-small-v5e-2 --project=my-project --zone=us-west4-a --force --quiet' EXIT
while true; do
  state=$(gcloud compute tpus queued-resources describe pretrax-t5-small-v5e-2 --project=my-project --zone=us-west4-a '--format=value(state.state)')
  case "$state" in
    ACTIVE) break ;;
    FAILED|SUSPENDED) echo "queued resource pretrax-t5-small-v5e-2 is $state" >&2; exit 1 ;;
  esac
  sleep 60
done

# Install pretrax at the sweep's commit on every worker, in a Python 3.11 venv made by uv
# (the image's python3 may be older than jax needs), then set the workers up.
gcloud compute tpus tpu-vm ssh pretrax-t5-small-v5e-2 --project=my-project --zone=us-west4-a --worker=all \
    --command="set -e; [ -d ~/pretrax ] || git clone -q https://github.com/example/pretrax.git ~/pretrax; cd ~/pretrax; git fetch -q origin; git checkout -q 6d0d24e; [ -x ~/.local/bin/uv ] || { curl -LsSf https://astral.sh/uv/install.sh -o /tmp/uv-install.sh && UV_UNMANAGED_INSTALL=~/.local/bin sh /tmp/uv-install.sh; }; [ -x ~/pretrax-py3.11/bin/python ] || ~/.local/bin/uv venv -q --python 3.11 ~/pretrax-py3.11; ~/.local/bin/uv pip install -q --python ~/pretrax-py3.11/bin/python -e . 'jax[tpu]>=0.10,<0.13'" \
    || exit 1
gcloud compute tpus tpu-vm ssh pretrax-t5-small-v5e-2 --project=my-project --zone=us-west4-a --worker=all '--command=mountpoint -q /mnt/gcs || (sudo mkdir -p /mnt/gcs && sudo gcsfuse --uid=$(id -u) --gid=$(id -g) --rename-dir-limit=200000 --implicit-dirs -o allow_other my-pretrax-bucket /mnt/gcs)' \
    || exit 1

# Run seed=2.
rm -f "$SWEEP_ROOT"/seed=2/sweep/not_started
gcloud compute tpus tpu-vm ssh pretrax-t5-small-v5e-2 --project=my-project --zone=us-west4-a --worker=all \
    --command="cd ~/pretrax && PRETRAX_JOB_ID=t5_small_v5e/seed=2 TFDS_DATA_DIR=gs://my-pretrax-bucket/tensorflow_datasets ~/pretrax-py3.11/bin/python -m launch.train --config=configs/t5.py:t5_1_1_small --config.data.source=seqio --config.data.task=pretrax_c4_en_span_corruption --config.checkpoint.every=1000 --config.seed=2 --workdir=/mnt/gcs/sweeps/t5_small_v5e/seed=2"
echo $? > "$SWEEP_ROOT"/seed=2/sweep/exit_code
