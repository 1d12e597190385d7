// Everything a LibTorch program needs from zinf.
#pragma once

#include "zinf/common/config.hpp"
#include "zinf/common/status.hpp"
#include "zinf/offload/engine.hpp"
#include "zinf/offload/lr_scheduler.hpp"
#include "zinf/offload/offload_optimizer.hpp"
#include "zinf/offload/offload_options.hpp"
#include "zinf/offload/unit.hpp"
