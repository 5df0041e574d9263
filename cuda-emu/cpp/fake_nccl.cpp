// An NCCL library (`libnccl.so.2`) for the fake driver (fake_cuda.cpp): the calls the trainer's
// data parallelism makes, across processes on one machine. A communicator is a file in /dev/shm
// (named by the unique id) mapped by every rank: a header with a process-shared barrier and an
// abort flag, then one staging slot per rank. A collective runs on the calling thread, as every
// stream of the fake driver does: each rank copies its chunk into its slot, all meet at the
// barrier, each rank reads every slot in rank order (so a sum is ((r0 + r1) + r2) + ..., the
// same bits on every rank and in every run), and all meet again before the slots are reused.
// ncclCommAbort (from any thread) makes every rank's waiting collective return an error.
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <random>
#include <sched.h>
#include <string>
#include <sys/mman.h>
#include <unistd.h>

namespace {

enum Result : int {
    Success = 0,
    SystemError = 2,
    InternalError = 3,
    InvalidArgument = 4,
    InvalidUsage = 5,
    RemoteError = 6,
};

enum DataType : int { Float32 = 7, Float64 = 8 };
enum RedOp : int { Sum = 0 };

constexpr size_t kIdBytes = 128;
constexpr size_t kHeaderBytes = 4096;
constexpr size_t kSlotBytes = 1 << 20;
constexpr const char* kIdTag = "redpack-nccl-emu:";

struct Header {
    std::atomic<uint32_t> arrived;
    std::atomic<uint32_t> generation;
    std::atomic<uint32_t> aborted;
    std::atomic<int32_t> nranks;
};
static_assert(sizeof(Header) <= kHeaderBytes, "header");

struct Comm {
    Header* header;
    char* slots;
    size_t bytes;
    int nranks;
    int rank;
    std::atomic<bool> aborted;
};

std::string shm_path(const char* id) {
    return std::string("/dev/shm/redpack-nccl-") + (id + strlen(kIdTag));
}

// Waits until every rank has arrived; false when the communicator was aborted.
bool barrier(Comm* c) {
    Header* h = c->header;
    uint32_t gen = h->generation.load();
    if (h->arrived.fetch_add(1) + 1 == (uint32_t)c->nranks) {
        h->arrived.store(0);
        h->generation.fetch_add(1);
        return !h->aborted.load();
    }
    unsigned spins = 0;
    while (h->generation.load() == gen) {
        if (c->aborted.load() || h->aborted.load()) return false;
        if (++spins < 64) {
            sched_yield();
        } else {
            timespec t{0, 50 * 1000};
            nanosleep(&t, nullptr);
        }
    }
    return !h->aborted.load();
}

template <typename T>
void sum_slots(const Comm* c, size_t offset, size_t n, T* out) {
    for (size_t i = 0; i < n; ++i) {
        T acc = reinterpret_cast<const T*>(c->slots)[i];
        for (int r = 1; r < c->nranks; ++r) {
            acc += reinterpret_cast<const T*>(c->slots + (size_t)r * kSlotBytes)[i];
        }
        out[offset + i] = acc;
    }
}

size_t type_size(int type) {
    switch (type) {
        case Float32: return 4;
        case Float64: return 8;
        default: return 0;
    }
}

}  // namespace

extern "C" {

typedef struct {
    char internal[kIdBytes];
} ncclUniqueId;

const char* ncclGetErrorString(int result) {
    switch (result) {
        case Success: return "no error";
        case SystemError: return "the communicator was aborted (emulated NCCL)";
        case InternalError: return "internal error (emulated NCCL)";
        case InvalidArgument: return "invalid argument (emulated NCCL)";
        case InvalidUsage: return "invalid usage (emulated NCCL)";
        case RemoteError: return "remote process exited or there was a network error";
        default: return "unknown result";
    }
}

int ncclGetVersion(int* version) {
    *version = 22800;
    return Success;
}

int ncclGetUniqueId(ncclUniqueId* id) {
    std::random_device rd;
    char token[64];
    snprintf(token, sizeof token, "%d-%08x%08x", (int)getpid(), rd(), rd());
    memset(id->internal, 0, kIdBytes);
    snprintf(id->internal, kIdBytes, "%s%s", kIdTag, token);
    return Success;
}

int ncclCommInitRank(Comm** out, int nranks, ncclUniqueId id, int rank) {
    if (nranks < 1 || rank < 0 || rank >= nranks) return InvalidArgument;
    id.internal[kIdBytes - 1] = 0;
    if (strncmp(id.internal, kIdTag, strlen(kIdTag)) != 0) return InvalidArgument;
    std::string path = shm_path(id.internal);
    size_t bytes = kHeaderBytes + (size_t)nranks * kSlotBytes;
    int fd = open(path.c_str(), O_RDWR | O_CREAT, 0600);
    if (fd < 0) return SystemError;
    if (ftruncate(fd, (off_t)bytes) != 0) {
        close(fd);
        return SystemError;
    }
    void* map = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return SystemError;
    Comm* c = new Comm;
    c->header = static_cast<Header*>(map);
    c->slots = static_cast<char*>(map) + kHeaderBytes;
    c->bytes = bytes;
    c->nranks = nranks;
    c->rank = rank;
    c->aborted.store(false);
    int32_t expected = 0;
    if (!c->header->nranks.compare_exchange_strong(expected, nranks) && expected != nranks) {
        munmap(map, bytes);
        delete c;
        return InvalidUsage;
    }
    if (!barrier(c)) return SystemError;
    // Every rank has the file mapped: the name is no longer needed.
    if (rank == 0) unlink(path.c_str());
    *out = c;
    return Success;
}

int ncclAllReduce(const void* send, void* recv, size_t count, int type, int op, Comm* c,
                  void*) {
    size_t size = type_size(type);
    if (c == nullptr || size == 0 || op != Sum) return InvalidArgument;
    size_t per_chunk = kSlotBytes / size;
    for (size_t done = 0; done < count; done += per_chunk) {
        size_t n = count - done < per_chunk ? count - done : per_chunk;
        memcpy(c->slots + (size_t)c->rank * kSlotBytes,
               static_cast<const char*>(send) + done * size, n * size);
        if (!barrier(c)) return RemoteError;
        if (type == Float32) {
            sum_slots(c, done, n, static_cast<float*>(recv));
        } else {
            sum_slots(c, done, n, static_cast<double*>(recv));
        }
        if (!barrier(c)) return RemoteError;
    }
    return Success;
}

int ncclBroadcast(const void* send, void* recv, size_t count, int type, int root, Comm* c,
                  void*) {
    size_t size = type_size(type);
    if (c == nullptr || size == 0 || root < 0 || root >= c->nranks) return InvalidArgument;
    size_t per_chunk = kSlotBytes / size;
    for (size_t done = 0; done < count; done += per_chunk) {
        size_t n = count - done < per_chunk ? count - done : per_chunk;
        if (c->rank == root) {
            memcpy(c->slots, static_cast<const char*>(send) + done * size, n * size);
        }
        if (!barrier(c)) return RemoteError;
        memmove(static_cast<char*>(recv) + done * size, c->slots, n * size);
        if (!barrier(c)) return RemoteError;
    }
    return Success;
}

// Collectives run at once, so a group only brackets them.
int ncclGroupStart() { return Success; }
int ncclGroupEnd() { return Success; }

int ncclCommGetAsyncError(Comm* c, int* error) {
    *error = (c->aborted.load() || c->header->aborted.load()) ? RemoteError : Success;
    return Success;
}

// Marks the communicator aborted for every rank; the mapping stays (a collective on another
// thread may still be reading it).
int ncclCommAbort(Comm* c) {
    if (c == nullptr) return Success;
    c->aborted.store(true);
    c->header->aborted.store(1);
    return Success;
}

int ncclCommDestroy(Comm* c) {
    if (c == nullptr) return Success;
    munmap(c->header, c->bytes);
    delete c;
    return Success;
}

}  // extern "C"
