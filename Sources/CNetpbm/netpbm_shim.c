#include "netpbm_shim.h"

#include <pam.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>

// The message of the last libnetpbm error; libnetpbm calls us instead of printing it.
static char last_error[512];

static void capture_error(const char *msg) {
    snprintf(last_error, sizeof last_error, "%s", msg);
    size_t n = strlen(last_error);
    while (n > 0 && (last_error[n - 1] == '\n' || last_error[n - 1] == '.')) last_error[--n] = 0;
}

static void ignore_message(const char *msg) { (void)msg; }

static void init_once(void) {
    static int done = 0;
    if (done) return;
    done = 1;
    pm_init("diffedit", 0);
    pm_setusererrormsgfn(capture_error);
    pm_setusermessagefn(ignore_message);
}

static void copy_error(char *err, size_t errlen) {
    snprintf(err, errlen, "%s", last_error[0] ? last_error : "libnetpbm failed");
}

int diffedit_image_read_header(FILE *file, int is_first, diffedit_image_info *info,
                               char *err, size_t errlen) {
    init_once();
    jmp_buf jb;
    jmp_buf *saved;
    last_error[0] = 0;
    if (setjmp(jb) != 0) {
        pm_setjmpbuf(saved);
        copy_error(err, errlen);
        return -1;
    }
    pm_setjmpbufsave(&jb, &saved);
    if (!is_first) {
        int eof = 0;
        pnm_nextimage(file, &eof);
        if (eof) { pm_setjmpbuf(saved); return 1; }
    }
    struct pam pam;
    memset(&pam, 0, sizeof pam);
    pnm_readpaminit(file, &pam, PAM_STRUCT_SIZE(tuple_type));
    pm_setjmpbuf(saved);
    info->width = pam.width;
    info->height = pam.height;
    info->depth = (int)pam.depth;
    info->maxval = pam.maxval;
    info->format = pam.format;
    snprintf(info->tuple_type, sizeof info->tuple_type, "%s", pam.tuple_type);
    return 0;
}

int diffedit_image_read_raster(FILE *file, const diffedit_image_info *info, float *out,
                               char *err, size_t errlen) {
    init_once();
    struct pam pam;
    memset(&pam, 0, sizeof pam);
    pam.size = PAM_STRUCT_SIZE(tuple_type);
    pam.len = PAM_STRUCT_SIZE(tuple_type);
    pam.file = file;
    pam.format = info->format;
    pam.plainformat = 0;
    pam.width = info->width;
    pam.height = info->height;
    pam.depth = (unsigned int)info->depth;
    pam.maxval = info->maxval;
    pam.bytes_per_sample = pam.maxval < 256 ? 1 : 2;
    snprintf(pam.tuple_type, sizeof pam.tuple_type, "%s", info->tuple_type);

    jmp_buf jb;
    jmp_buf *saved;
    tuple *volatile row = NULL;
    last_error[0] = 0;
    if (setjmp(jb) != 0) {
        pm_setjmpbuf(saved);
        if (row) pnm_freepamrow(row);
        copy_error(err, errlen);
        return -1;
    }
    pm_setjmpbufsave(&jb, &saved);
    row = pnm_allocpamrow(&pam);
    // Divide (not multiply by a reciprocal): numpy's u8 / 255.0 in float32 is what diffusers does.
    const float maxval = (float)pam.maxval;
    const size_t depth = pam.depth;
    for (int y = 0; y < pam.height; y++) {
        pnm_readpamrow(&pam, row);
        float *dst = out + (size_t)y * (size_t)pam.width * depth;
        for (int x = 0; x < pam.width; x++)
            for (size_t c = 0; c < depth; c++)
                dst[(size_t)x * depth + c] = (float)row[x][c] / maxval;
    }
    pnm_freepamrow(row);
    pm_setjmpbuf(saved);
    return 0;
}

int diffedit_image_write(FILE *file, int width, int height, int depth, unsigned long maxval,
                         const unsigned short *samples, char *err, size_t errlen) {
    init_once();
    struct pam pam;
    memset(&pam, 0, sizeof pam);
    pam.size = PAM_STRUCT_SIZE(tuple_type);
    pam.len = PAM_STRUCT_SIZE(tuple_type);
    pam.file = file;
    pam.format = depth == 1 ? RPGM_FORMAT : RPPM_FORMAT;
    pam.plainformat = 0;
    pam.width = width;
    pam.height = height;
    pam.depth = (unsigned int)depth;
    pam.maxval = maxval;
    snprintf(pam.tuple_type, sizeof pam.tuple_type, "%s", depth == 1 ? "GRAYSCALE" : "RGB");

    jmp_buf jb;
    jmp_buf *saved;
    tuple *volatile row = NULL;
    last_error[0] = 0;
    if (setjmp(jb) != 0) {
        pm_setjmpbuf(saved);
        if (row) pnm_freepamrow(row);
        copy_error(err, errlen);
        return -1;
    }
    pm_setjmpbufsave(&jb, &saved);
    pnm_writepaminit(&pam);
    row = pnm_allocpamrow(&pam);
    for (int y = 0; y < height; y++) {
        const unsigned short *src = samples + (size_t)y * (size_t)width * (size_t)depth;
        for (int x = 0; x < width; x++)
            for (int c = 0; c < depth; c++)
                row[x][c] = src[(size_t)x * (size_t)depth + (size_t)c];
        pnm_writepamrow(&pam, row);
    }
    pnm_freepamrow(row);
    pm_setjmpbuf(saved);
    if (fflush(file) != 0) {
        snprintf(err, errlen, "write error: %s", strerror(ferror(file) ? errno : EIO));
        return -1;
    }
    return 0;
}
