// Runs launches of crest/gpu/kernels.cu on the CPU (see cuda_host.h), driven by a job file
// that tests/gpu/_emulator.py writes:
//
//   seed S
//   buffer NBYTES ITEMSIZE PATH   (repeated: buffer i, read from PATH, written back to PATH.out)
//   launch NAME GX GY GZ BX BY BZ SMEM NARGS ARG...
//
// where each ARG is `b<i>` (buffer i, passed as a pointer), `i32:<v>` or `i64:<v>`. A
// buffer passed where the kernel takes a pointer to elements of another size (bytes
// excepted) aborts the run: the launcher handed the kernel the wrong array. Every
// buffer is its own heap allocation of exactly NBYTES (256-byte aligned, as CuPy's), so
// AddressSanitizer reports any access outside it.
#include "cuda_host.h"

#include <fstream>
#include <sstream>
#include <string>

#include "kernels_host.inc"

namespace {

struct Buffer {
    std::size_t nbytes = 0;
    std::size_t itemsize = 1;
    std::string path;
    unsigned char* data = nullptr;
};

struct Arg {
    char kind = 0;  // 'b' buffer, 'i' int32, 'l' int64
    long long value = 0;
};

std::vector<Buffer> g_buffers;

Arg parse_arg(const std::string& s) {
    Arg a;
    if (s.rfind("b", 0) == 0) {
        a.kind = 'b';
        a.value = std::stoll(s.substr(1));
        if (a.value < 0 || static_cast<std::size_t>(a.value) >= g_buffers.size()) crest_emu::fail("no such buffer");
    } else if (s.rfind("i32:", 0) == 0) {
        a.kind = 'i';
        a.value = std::stoll(s.substr(4));
    } else if (s.rfind("i64:", 0) == 0) {
        a.kind = 'l';
        a.value = std::stoll(s.substr(4));
    } else {
        crest_emu::fail("bad argument");
    }
    return a;
}

// Typed access to launch arguments; the expected kinds are checked before the launch.
struct Args {
    std::vector<Arg> a;
    template <typename T>
    T* ptr(std::size_t i) const {
        const Buffer& b = g_buffers[static_cast<std::size_t>(a[i].value)];
        if (sizeof(T) != 1 && sizeof(T) != b.itemsize)
            crest_emu::fail("an array's element size differs from the kernel's pointer type");
        return reinterpret_cast<T*>(b.data);
    }
    int i32(std::size_t i) const { return static_cast<int>(a[i].value); }
    long long i64(std::size_t i) const { return a[i].value; }
    void expect(const char* kinds) const {
        if (std::strlen(kinds) != a.size()) crest_emu::fail("wrong number of kernel arguments");
        for (std::size_t i = 0; i < a.size(); ++i)
            if (a[i].kind != kinds[i]) crest_emu::fail("wrong kind of kernel argument");
    }
};

#define CREST_EMU_DECODE(NAME, T)                                                                  \
    if (name == #NAME) {                                                                           \
        args.expect("bbbbbliiiil");                                                                \
        return [args] {                                                                            \
            NAME(args.ptr<const crest_u32>(0), args.ptr<const crest_u32>(1),                       \
                 args.ptr<const crest_i64>(2), args.ptr<const T>(3), args.ptr<T>(4), args.i64(5), \
                 args.i32(6), args.i32(7), args.i32(8), args.i32(9), args.i64(10));                \
        };                                                                                         \
    }

std::function<void()> kernel(const std::string& name, const Args& args) {
    CREST_EMU_DECODE(crest_decode_u8, unsigned char)
    CREST_EMU_DECODE(crest_decode_u16, unsigned short)
    CREST_EMU_DECODE(crest_decode_u32, unsigned int)
    CREST_EMU_DECODE(crest_decode_u64, unsigned long long)
    if (name == "crest_fill_regions") {
        args.expect("bbbii");
        return [args] {
            crest_fill_regions(args.ptr<unsigned char>(0), args.ptr<const crest_i64>(1), args.ptr<const crest_i64>(2),
                               args.i32(3), args.i32(4));
        };
    }
    if (name == "crest_spmv_f32") {
        args.expect("bbbbbbliiiilli");
        return [args] {
            crest_spmv_f32(args.ptr<const crest_u32>(0), args.ptr<const crest_u32>(1), args.ptr<const crest_i64>(2),
                           args.ptr<const float>(3), args.ptr<const float>(4), args.ptr<float>(5), args.i64(6),
                           args.i32(7), args.i32(8), args.i32(9), args.i32(10), args.i64(11), args.i64(12),
                           args.i32(13));
        };
    }
    crest_emu::fail("unknown kernel");
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) crest_emu::fail("usage: runner JOB");
    std::ifstream job(argv[1]);
    if (!job) crest_emu::fail("cannot open the job file");
    unsigned seed = 0;
    std::string line;
    while (std::getline(job, line)) {
        std::istringstream in(line);
        std::string what;
        in >> what;
        if (what == "seed") {
            in >> seed;
        } else if (what == "buffer") {
            Buffer b;
            in >> b.nbytes >> b.itemsize >> b.path;
            void* p = nullptr;
            if (posix_memalign(&p, 256, b.nbytes ? b.nbytes : 1) != 0) crest_emu::fail("out of host memory");
            b.data = static_cast<unsigned char*>(p);
            std::ifstream f(b.path, std::ios::binary);
            if (!f.read(reinterpret_cast<char*>(b.data), static_cast<std::streamsize>(b.nbytes)))
                crest_emu::fail("cannot read a buffer");
            g_buffers.push_back(b);
        } else if (what == "launch") {
            std::string name;
            dim3 grid, block;
            std::size_t smem = 0, nargs = 0;
            in >> name >> grid.x >> grid.y >> grid.z >> block.x >> block.y >> block.z >> smem >> nargs;
            Args args;
            for (std::size_t i = 0; i < nargs; ++i) {
                std::string s;
                in >> s;
                args.a.push_back(parse_arg(s));
            }
            if (!in) crest_emu::fail("bad launch line");
            crest_emu::launch(grid, block, smem, kernel(name, args), seed++);
        } else if (!what.empty()) {
            crest_emu::fail("bad job line");
        }
    }
    for (const Buffer& b : g_buffers) {
        std::ofstream f(b.path + ".out", std::ios::binary);
        f.write(reinterpret_cast<const char*>(b.data), static_cast<std::streamsize>(b.nbytes));
        if (!f) crest_emu::fail("cannot write a buffer");
        std::free(b.data);
    }
    return 0;
}
