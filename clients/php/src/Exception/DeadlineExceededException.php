<?php

declare(strict_types=1);

namespace Plasm\Exception;

/**
 * DEADLINE_EXCEEDED: the call's deadline passed, as the node reported it
 * (with reason ERROR_REASON_DEADLINE_EXCEEDED for a job, whose message says
 * where it may have run) or as the client's own timer saw it (no reason).
 */
class DeadlineExceededException extends RpcException
{
}
