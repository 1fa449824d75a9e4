// A small C layer over libnetpbm for diffedit.
//
// libnetpbm reports errors through pm_error(), which normally prints and exits the process.
// These functions install a setjmp buffer around every libnetpbm call and return the message
// instead, so a Swift tool can print one line in its own voice and choose its exit status.
#ifndef DIFFEDIT_NETPBM_SHIM_H
#define DIFFEDIT_NETPBM_SHIM_H

#include <stddef.h>
#include <stdio.h>

typedef struct {
    int width;
    int height;
    int depth;             // samples per pixel: 1 grey, 2 grey+alpha, 3 RGB, 4 RGB+alpha
    unsigned long maxval;
    int format;            // libnetpbm format code (PBM/PGM/PPM/PAM, plain or raw)
    char tuple_type[256];  // PAM tuple type, "" when the input is PBM/PGM/PPM
} diffedit_image_info;

// Reads the header of the next image in `file` (the first call reads the first image; later
// calls skip to the next image of a multi-image stream). Returns 1 when the stream has no more
// images, 0 on success, -1 on error (message in err).
int diffedit_image_read_header(FILE *file, int is_first, diffedit_image_info *info,
                               char *err, size_t errlen);

// Reads the raster of the image whose header was just read into `out`, interleaved HWC
// (height*width*depth floats), each sample divided by maxval (so in [0, 1]).
// Returns 0 on success, -1 on error.
int diffedit_image_read_raster(FILE *file, const diffedit_image_info *info, float *out,
                               char *err, size_t errlen);

// The same raster as integer levels 0..maxval (maxval at most 65535), interleaved HWC.
int diffedit_image_read_levels(FILE *file, const diffedit_image_info *info, unsigned short *out,
                               char *err, size_t errlen);

// Writes one image to `file` as raw PPM (depth 3) or PGM (depth 1) with the given maxval
// (255 or 65535); samples are interleaved HWC, already scaled to 0..maxval.
// Returns 0 on success, -1 on error.
int diffedit_image_write(FILE *file, int width, int height, int depth, unsigned long maxval,
                         const unsigned short *samples, char *err, size_t errlen);

// Writes one image in a given libnetpbm format (PBM/PGM/PPM/PAM; the raw variant of a plain one)
// and, for PAM, tuple type: what an image read with diffedit_image_read_header was, written back.
int diffedit_image_write_format(FILE *file, int width, int height, int depth, unsigned long maxval,
                                int format, const char *tuple_type, const unsigned short *samples,
                                char *err, size_t errlen);

#endif
