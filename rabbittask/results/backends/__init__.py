"""Result-backend plugins shipped with rabbittask (each needs its extra, e.g. `rabbittask[redis]`)."""
