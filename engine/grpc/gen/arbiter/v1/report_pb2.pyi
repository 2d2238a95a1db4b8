from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExperimentReportRequest(_message.Message):
    __slots__ = ("experiment",)
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    def __init__(self, experiment: _Optional[str] = ...) -> None: ...

class ArmReport(_message.Message):
    __slots__ = ("arm", "exposures", "rewards", "posterior_mean", "ci_low", "ci_high", "prob_best", "expected_loss", "allocation", "posterior")
    ARM_FIELD_NUMBER: _ClassVar[int]
    EXPOSURES_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    POSTERIOR_MEAN_FIELD_NUMBER: _ClassVar[int]
    CI_LOW_FIELD_NUMBER: _ClassVar[int]
    CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    PROB_BEST_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_LOSS_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_FIELD_NUMBER: _ClassVar[int]
    POSTERIOR_FIELD_NUMBER: _ClassVar[int]
    arm: str
    exposures: float
    rewards: float
    posterior_mean: float
    ci_low: float
    ci_high: float
    prob_best: float
    expected_loss: float
    allocation: float
    posterior: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, arm: _Optional[str] = ..., exposures: _Optional[float] = ..., rewards: _Optional[float] = ..., posterior_mean: _Optional[float] = ..., ci_low: _Optional[float] = ..., ci_high: _Optional[float] = ..., prob_best: _Optional[float] = ..., expected_loss: _Optional[float] = ..., allocation: _Optional[float] = ..., posterior: _Optional[_Iterable[float]] = ...) -> None: ...

class SampleRatioCheck(_message.Message):
    __slots__ = ("applies", "p_value", "mismatch", "since_change")
    APPLIES_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    MISMATCH_FIELD_NUMBER: _ClassVar[int]
    SINCE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    applies: bool
    p_value: float
    mismatch: bool
    since_change: bool
    def __init__(self, applies: _Optional[bool] = ..., p_value: _Optional[float] = ..., mismatch: _Optional[bool] = ..., since_change: _Optional[bool] = ...) -> None: ...

class ExperimentReportResponse(_message.Message):
    __slots__ = ("experiment", "placement", "allocation", "reward", "posterior", "arms", "holdout", "holdout_percent", "srm", "best_arm", "winner", "revision")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    POSTERIOR_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_PERCENT_FIELD_NUMBER: _ClassVar[int]
    SRM_FIELD_NUMBER: _ClassVar[int]
    BEST_ARM_FIELD_NUMBER: _ClassVar[int]
    WINNER_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    placement: str
    allocation: str
    reward: str
    posterior: str
    arms: _containers.RepeatedCompositeFieldContainer[ArmReport]
    holdout: ArmReport
    holdout_percent: float
    srm: SampleRatioCheck
    best_arm: str
    winner: str
    revision: str
    def __init__(self, experiment: _Optional[str] = ..., placement: _Optional[str] = ..., allocation: _Optional[str] = ..., reward: _Optional[str] = ..., posterior: _Optional[str] = ..., arms: _Optional[_Iterable[_Union[ArmReport, _Mapping]]] = ..., holdout: _Optional[_Union[ArmReport, _Mapping]] = ..., holdout_percent: _Optional[float] = ..., srm: _Optional[_Union[SampleRatioCheck, _Mapping]] = ..., best_arm: _Optional[str] = ..., winner: _Optional[str] = ..., revision: _Optional[str] = ...) -> None: ...

class ModelReportRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelQuality(_message.Message):
    __slots__ = ("model", "learner", "examples", "rolling_auc", "rolling_log_loss", "mean_predicted", "observed_rate", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LEARNER_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    ROLLING_AUC_FIELD_NUMBER: _ClassVar[int]
    ROLLING_LOG_LOSS_FIELD_NUMBER: _ClassVar[int]
    MEAN_PREDICTED_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_RATE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    model: str
    learner: str
    examples: int
    rolling_auc: float
    rolling_log_loss: float
    mean_predicted: float
    observed_rate: float
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, model: _Optional[str] = ..., learner: _Optional[str] = ..., examples: _Optional[int] = ..., rolling_auc: _Optional[float] = ..., rolling_log_loss: _Optional[float] = ..., mean_predicted: _Optional[float] = ..., observed_rate: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ModelReportResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelQuality]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelQuality, _Mapping]]] = ...) -> None: ...
