/*
 * Run TVM kernels' parallel loops on PyTorch's OpenMP thread team.
 *
 * A TVM CPU kernel library calls its parallel loops through a function pointer it exports as
 * the data symbol __TVMBackendParallelLaunch (the runtime fills it in when the library is
 * loaded). TVM's own thread pool and PyTorch's OpenMP pool are then two sets of spinning threads
 * on the same cores: measured on a 2-core machine, a 512x512 matmul took 2.8 ms alone and 9.9 ms
 * when interleaved with torch ops, and every tiny kernel paid ~12 us for a hand-off to TVM's
 * worker. torch_rc points that symbol at rc_parallel_launch below, which runs the tasks on the
 * OpenMP team torch uses (same libgomp instance, so one set of threads): 2.8 ms interleaved too.
 *
 * The libgomp entry points are passed in by address (rc_init) from the libgomp PyTorch loaded,
 * so this file links against nothing. It is also a (method-less) Python extension module, so
 * setuptools builds it like any other; Python code loads it with ctypes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

/* From tvm/runtime/c_backend_api.h (stable since TVM 0.6). */
typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);

typedef void (*gomp_parallel_t)(void (*fn)(void*), void* data, unsigned num_threads,
                                unsigned flags);
typedef int (*omp_int_t)(void);
typedef void (*gomp_barrier_t)(void);

static gomp_parallel_t g_parallel;
static omp_int_t g_thread_num;
static omp_int_t g_num_threads;
static omp_int_t g_max_threads;
static gomp_barrier_t g_barrier;
static int g_cap; /* at most this many tasks per launch (0: omp_get_max_threads()) */

int rc_init(void* parallel, void* thread_num, void* num_threads, void* max_threads,
            void* barrier) {
  if (!parallel || !thread_num || !num_threads || !max_threads || !barrier) return -1;
  g_parallel = (gomp_parallel_t)parallel;
  g_thread_num = (omp_int_t)thread_num;
  g_num_threads = (omp_int_t)num_threads;
  g_max_threads = (omp_int_t)max_threads;
  g_barrier = (gomp_barrier_t)barrier;
  return 0;
}

void rc_set_cap(int cap) { g_cap = cap; }

struct rc_job {
  FTVMParallelLambda fn;
  void* cdata;
  TVMParallelGroupEnv env;
  volatile int status;
};

static void rc_body(void* data) {
  struct rc_job* job = (struct rc_job*)data;
  int team = g_num_threads();
  /* Every task id runs exactly once even if OpenMP gave a smaller team than asked for. */
  for (int task = g_thread_num(); task < job->env.num_task; task += team) {
    int status = job->fn(task, &job->env, job->cdata);
    if (status != 0) job->status = status;
  }
}

int rc_parallel_launch(FTVMParallelLambda fn, void* cdata, int num_task) {
  int n = num_task > 0 ? num_task : (g_cap > 0 ? g_cap : g_max_threads());
  if (n <= 1) {
    TVMParallelGroupEnv env = {NULL, 1};
    return fn(0, &env, cdata);
  }
  struct rc_job job = {fn, cdata, {NULL, n}, 0};
  g_parallel(rc_body, &job, (unsigned)n, 0);
  return job.status;
}

int rc_parallel_barrier(int task_id, TVMParallelGroupEnv* penv) {
  (void)task_id;
  (void)penv;
  g_barrier();
  return 0;
}

static struct PyModuleDef rc_module = {PyModuleDef_HEAD_INIT, "_omp_launch",
                                       "TVM parallel launches on PyTorch's OpenMP team "
                                       "(loaded with ctypes; see torch_rc/platform/threads.py)",
                                       -1, NULL};

PyMODINIT_FUNC PyInit__omp_launch(void) { return PyModule_Create(&rc_module); }
