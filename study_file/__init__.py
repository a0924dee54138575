"""What a study file declares, loaded and checked with no runner in reach: the searched space
(space.py), the tuning and its choice (tuning.py), the study itself (study.py). The runner
(study.py at the top level) and the analysis both read studies through this package."""

from study_file.space import (
           Choice,
           Range,
           Search,
           StudyError,
           dimension,
           is_number,
           load_search,
)
from study_file.study import (
           Arm,
           Rung,
           Study,
           arm_stem,
           load_study,
           run_name,
           rung_name,
           tuning_candidates,
           tuning_runs,
)
from study_file.tuning import (
           Candidate,
           Tuning,
           chosen_candidates,
           chosen_lrs,
           load_tuning,
           objective_value,
)

__all__ = ["Choice", "Range", "Search", "StudyError", "dimension", "is_number", "load_search", "Candidate", "Tuning",
           "chosen_candidates", "chosen_lrs", "load_tuning", "objective_value", "Arm", "Rung", "Study", "arm_stem",
           "load_study", "run_name", "rung_name", "tuning_candidates", "tuning_runs"]
