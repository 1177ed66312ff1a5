"""The names the study records (user-attribute keys, stop reasons) and the default storage,
declared once.

They are part of the stored format (``optuna.load_study`` readers and older studies see
these exact strings), so a value here never changes; new ones may be added.
"""

from __future__ import annotations

from typing import Final

# Where studies live unless a study file or --storage says otherwise.
DEFAULT_STORAGE: Final = "sqlite:///runs/studies.db"


class Attr:
    """User-attribute keys of a trial (``trial.user_attrs[Attr.STOP_REASON]``)."""

    STOP_REASON: Final = "stop_reason"  # why the trial ended: a :class:`Reason` value
    ERROR: Final = "error"  # the traceback's tail or what went wrong, for a person
    CONFIG: Final = "config"  # the resolved trial settings; present once a worker got it
    CHECKPOINT: Final = "checkpoint"  # the trial's checkpoint folder
    RETRY_OF: Final = "retry_of"  # number of the lost trial this one reruns
    FORKED_FROM: Final = "forked_from"  # "study:NAME#N" of a copied trial
    DRIVER: Final = "driver"  # host:pid of the driver that ran it
    RAY_TRIAL_ID: Final = "ray_trial_id"
    WORKER_FAILURES: Final = "worker_failures"  # reruns after its worker process died
    PRETRAINED_FROM: Final = "pretrained_from"  # the "study:NAME" its weights came from
    CHECKPOINT_WARNING: Final = "checkpoint_warning"  # a corrupt checkpoint it fell back from
    EPOCHS_DONE: Final = "epochs_done"
    RESUMED_FROM_EPOCH: Final = "resumed_from_epoch"
    WALL_SECONDS: Final = "wall_seconds"
    TRAIN_SECONDS: Final = "train_seconds"  # device time training and validating
    DEVICE: Final = "device"
    # {"host", "ip", "node_id"} of the Ray node that ran it (the last one, after a rerun on
    # another node; "nodes" then lists every node it ran on, in order)
    NODE: Final = "node"
    STARTED_OVER: Final = "started_over"  # why a rerun trained from epoch 1 again
    NODES: Final = "nodes"
    ARM: Final = "arm"  # ablations: the arm's name
    SEED: Final = "seed"  # ablations: the seed of this arm x seed cell
    TEST_IMAGES: Final = "test_images"  # final evaluation: test images it was evaluated on
    TEST_LOSS: Final = "test_loss"  # final evaluation: the test split's cross-entropy


class StudyAttr:
    """User-attribute keys of a study."""

    UID: Final = "uid"  # keeps two studies of one name out of each other's checkpoints
    STUDY_FILE: Final = "study_file"  # the resolved study file it was created from
    ABLATION: Final = "ablation"  # an ablation's design, to refuse a changed plan
    CREATED_ON_HOST: Final = "created_on_host"
    PACKAGE_VERSION: Final = "package_version"
    GIT_SHA: Final = "git_sha"
    EVALUATES: Final = "evaluates"  # final evaluation: the search study it evaluates
    EVALUATION: Final = "evaluation"  # final evaluation: its plan and who read the test split


class Reason:
    """Stop reasons (``Attr.STOP_REASON``). Failures of a trial's own making are built
    from a prefix: ``nan@epoch 3``, ``exception:OSError[ENOSPC]``."""

    COMPLETED: Final = "completed"  # ran its whole epoch budget
    ASHA: Final = "asha"  # pruned at a rung
    INTERRUPTED: Final = "interrupted"  # the driver stopped before it finished
    DRIVER_LOST: Final = "driver_lost"  # its driver died; settled by the next run
    WORKER_DIED: Final = "worker_died"  # its process died more than max_failures times
    TELL_FAILED: Final = "tell_failed"  # its result could not be stored
    OOM: Final = "oom"  # CUDA out of memory
    NAN_PREFIX: Final = "nan@"  # "nan@epoch N": a loss or metric became NaN/Inf
    EXCEPTION_PREFIX: Final = "exception:"


# A reference to another study of the same storage: `pretrained: study:NAME` (its best
# trial's checkpoint), `baseline: {from: study:NAME}` (its best trial's settings).
STUDY_PREFIX: Final = "study:"

# Trials that ended through no fault of their own: they are rerun first, from their
# checkpoints, by the next run.
RETRYABLE_REASONS: Final = (Reason.DRIVER_LOST, Reason.INTERRUPTED)
# Failures that depend on the configuration (too large a batch, too high a learning rate)
# rather than on the machine; they never count as "the same cause again".
CONFIG_DEPENDENT_REASONS: Final = (Reason.OOM, Reason.NAN_PREFIX)
